"""The quality filters, one module each: plain functions over a Batch returning a keep mask and a reason code."""
