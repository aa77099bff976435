"""The names of the ``text-embedding`` kind's backends and of the files they read from the
archive: shared by the worker (``servekit.runtime.backends``) and by ``servekit archive``,
which must not load torch to know them."""

EAGER = "eager"
ONNXRUNTIME = "onnxruntime"
ONNXRUNTIME_INT8 = "onnxruntime-int8"
BACKENDS = (EAGER, ONNXRUNTIME, ONNXRUNTIME_INT8)
ONNX_FILES = {ONNXRUNTIME: "model.onnx", ONNXRUNTIME_INT8: "model-int8.onnx"}
"""The file each non-eager backend reads from the archive."""
GATE_FILE = "backend-gate.json"
"""The accuracy gate's figures, written by ``servekit archive`` beside the model file."""
EXTRA = "onnx"
"""The package extra that installs ONNX Runtime (``pip install 'torchserve-kit[onnx]'``)."""
