"""MONAI Label: the bundle served by an app whose infer task refuses bad input with a 4xx and its
one-line reason, returns the GraTa report with the label, and writes uint8 labels (``app``; needs
``monailabel``)."""

__all__: list[str] = []
