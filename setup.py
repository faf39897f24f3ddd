"""The one compiled part: kvfs._blockio (kvfs/_blockio.c), built on the limited API so one build serves every
CPython >= 3.11.  Optional: without a C compiler the install still succeeds and kvfs uses its Python block-file
path (kvfs/nativeio.py says which one runs); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kvfs._blockio",
            ["kvfs/_blockio.c"],
            py_limited_api=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ],
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
