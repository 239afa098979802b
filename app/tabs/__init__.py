"""One module per tab of the page: each has a ``build(studio, ...)`` that makes its components and wires them."""
