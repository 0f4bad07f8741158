"""Brushwork: a local Stable Diffusion studio.

The Python API::

    from brushwork import Engine, GenerationRequest
    engine = Engine()                       # data home from $BRUSHWORK_HOME or the platform default
    engine.load("v1-5-pruned-emaonly")      # name, file name, path or model hash
    images = engine.txt2img(GenerationRequest("a lighthouse at dusk", seed=42))
    images[0].image.save("out.png")         # or brushwork.outputs.save_png(...) to keep the infotext
"""
__version__ = "0.1.0"

from .engine import Engine, GeneratedImage, GenerationRequest, RequestError  # noqa: E402

__all__ = ["Engine", "GenerationRequest", "GeneratedImage", "RequestError", "__version__"]
