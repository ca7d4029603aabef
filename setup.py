"""The ingest worker's compiled core (libjpeg-turbo + OpenSSL), the one thing pyproject.toml cannot
declare without an experimental table. Optional: without a C compiler or those headers the install
still succeeds and ingest runs the same checks in Python, slower."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "lakelabel.pipeline._fastscan",
            sources=["pipeline/_fastscan.c"],
            libraries=["jpeg", "crypto"],
            extra_compile_args=["-Wall"],
            optional=True,
        )
    ]
)
