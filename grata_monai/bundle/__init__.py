"""What serves the MONAI bundle in ``bundle/``: input discovery and output paths (``io``), DICOM
series checks (``dicom``), the run's intake of readable volumes and its summary (``intake``), stop
errors and known warnings (``console``), progress lines (``progress``), the audit-report handler
(``handlers``), training batches drawn on the GPU (``training``) and ``wrap``, which adds GraTa to
any MONAI bundle through a config overlay. Configs name these modules in full,
e.g. ``grata_monai.bundle.io.list_volumes``."""

__all__: list[str] = []
