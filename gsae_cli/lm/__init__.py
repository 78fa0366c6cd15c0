"""The language model and its text: loading models (hub or the offline default) and the corpus,
tokenised into windows.
"""
