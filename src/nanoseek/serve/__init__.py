"""Serving: the DeepSeek/OpenAI-compatible API (and, next, the chat app)."""
