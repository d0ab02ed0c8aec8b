"""whisperd: a folder-watching transcription daemon built on openai-whisper."""

__version__ = "0.1.0"
