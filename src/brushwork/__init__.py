"""Brushwork: a local Stable Diffusion studio.

The Python API::

    from brushwork import Engine, GenerationRequest
    engine = Engine()                       # data home from $BRUSHWORK_HOME or the platform default
    engine.load("v1-5-pruned-emaonly")      # name, file name, path or model hash
    images = engine.txt2img(GenerationRequest("a lighthouse at dusk", seed=42))
    images[0].image.save("out.png")         # or brushwork.outputs.save_png(...) to keep the infotext

The engine (and with it torch) is imported on first use, so torch-free parts such
as ``brushwork.prompts`` and ``brushwork.infotext`` stay light.
"""
__version__ = "0.1.0"

__all__ = ["Engine", "GenerationRequest", "GeneratedImage", "RequestError", "__version__"]


def __getattr__(name: str):
    if name in ("Engine", "GenerationRequest", "GeneratedImage", "RequestError"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'brushwork' has no attribute {name!r}")
