"""Composition: source -> palette -> store, as plain functions the CLI and flows call."""

from kquant.pipeline.core import (LUT_MIN_PIXELS, QuantizeResult, finished_store, fit,
                                  fit_histogram, imposed_fit,
                                  imposed_palette, inspect, preview, quantize, sample_chunks,
                                  sample_graph, source_record, store_chunks, store_shards,
                                  same_source, uses_lut, write, write_metrics)
from kquant.pipeline.shared_palette import fit_shared
