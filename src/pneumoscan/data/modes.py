"""The names of the preprocessing modes, torch-free, so settings and the command line can list them without
importing torch (pneumoscan.data.preprocess and pneumoscan.data.field_of_view implement them)."""

INTENSITY_MODES = ("none", "equalize", "clahe")
FOV_MODES = ("none", "trim", "lungs")
