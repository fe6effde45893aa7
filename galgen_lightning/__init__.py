"""galgen: did the generative model learn the distribution, or memorize its training set?

The two-models test: train two models of one family on disjoint halves of a galaxy dataset,
feed both the same noise, and compare what comes out.
"""

__version__ = "0.1.0"
