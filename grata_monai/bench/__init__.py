"""The project's own tooling, apart from the library: the benchmark, study and source evaluation
(``benchmark``), the report that turns their JSON into ``docs/benchmarks.md`` (``report``), the
compact data cache for a GPU host (``cache``) and the ``grata-monai`` command line (``cli``).
Data and bundle come from arguments or ``GRATA_DATA_DIR`` / ``GRATA_BUNDLE_DIR`` (``paths``)."""

__all__: list[str] = []
