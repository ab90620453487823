"""Multimodal inputs as plain data (images preprocessed into arrays, their placeholders in the prompt)."""
