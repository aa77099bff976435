"""The names of the backends, of the accuracy gates and of the files the backends read from the
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

EMBEDDING = "embedding"
"""The gate of vectors: mean and lowest cosine, nearest neighbours kept, on sentences."""
CLASSIFIER = "classifier"
"""The gate of classes: top-1 agreement and top-5 overlap, on real photos."""
DYNAMIC = "dynamic"
"""int8 weights, activations quantized at run time (ONNX Runtime's dynamic quantization)."""
STATIC = "static"
"""int8 weights and activations, scales calibrated at archive time (QDQ)."""
