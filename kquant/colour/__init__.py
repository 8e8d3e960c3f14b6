"""Colour primitives: 24-bit colour codes and histograms, colour spaces."""
