"""The names of the preprocessing modes, torch-free, so settings and the command line can list them without
importing torch (pneumoscan.data.preprocess and pneumoscan.data.field_of_view implement them)."""

from contextvars import ContextVar

INTENSITY_MODES = ("none", "equalize", "clahe")
FOV_MODES = ("none", "trim", "lungs")
# set inside pneumoscan.data.preprocess.portable_ops(): the ops a mobile runtime (TFLite) lowers are used
PORTABLE_OPS: ContextVar[bool] = ContextVar("pneumoscan_portable_ops", default=False)
