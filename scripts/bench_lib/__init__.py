"""The code behind ``scripts/bench`` (see ``cli``)."""
