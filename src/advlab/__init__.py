"""advlab: attack, evaluate and harden image classifiers against adversarial examples."""

__version__ = "0.1.0"
