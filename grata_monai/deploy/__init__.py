"""The bundle as a MONAI Deploy app: :mod:`~grata_monai.deploy.segments` (segment labels, codes and
bundle metadata; no SDK needed) and :mod:`~grata_monai.deploy.app` (the app; needs the SDK)."""

__all__: list[str] = []
