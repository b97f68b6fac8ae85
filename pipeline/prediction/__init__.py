"""Prediction: inputs, outputs, analyst extras, the HTML report, Spark."""
