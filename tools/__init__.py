"""Repository tools that are not installed with the package (run from a checkout: ``PYTHONPATH=$PWD``)."""
