"""The project's own tooling, apart from the library: the methods compared (``methods``), the
benchmark and source evaluation (``benchmark``), the study (``study``), what they share (``common``:
the bundle's configs, network and data, device, results files), the report that turns their JSON
into ``docs/benchmarks.md`` (``report``), the compact data cache for a GPU host (``cache``) and
``dice``. Data and bundle come from arguments or ``GRATA_DATA_DIR`` / ``GRATA_BUNDLE_DIR`` (``paths``).
The ``grata-monai`` command line is :mod:`grata_monai.cli`."""

__all__: list[str] = []
