"""What serves the MONAI bundle in ``bundle/``: input discovery and output paths (``io``), DICOM
series checks (``dicom``), the run's intake of readable volumes (``intake``), the audit-report
handler (``handlers``), training augmentation (``augment``) and ``wrap``, which adds GraTa to any
MONAI bundle through a config overlay. Configs name these modules in full,
e.g. ``grata_monai.bundle.io.list_volumes``."""

__all__: list[str] = []
