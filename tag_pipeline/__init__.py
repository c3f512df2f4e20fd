"""tag-pipeline: LLM-enhanced node classification on text-attributed graphs (TAPE).

The library: plain typed functions, one module per stage, that know nothing of Prefect.
"""

__version__ = "0.1.0"
