"""Benchmark: whisperd against stock openai-whisper and faster-whisper on the same audio (``make bench``)."""
