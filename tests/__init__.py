"""tomviz's tests; a package so that tests share helpers as ``from tests import tiny``."""
