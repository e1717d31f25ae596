"""Serving: a DeepSeek/OpenAI-compatible API and a web chat app over one engine loop.

  app.py      the engine loop thread, Prometheus metrics, guards, and create_app (the assembly)
  api.py      the OpenAI/DeepSeek routes: /v1/chat/completions (reasoning_content), /v1/completions
  webapp.py   the chat app's routes: its page at /, conversations and streamed replies under /api
  http.py     what both share: ServerConfig, the Backend handle, errors, SSE, JSON/schema helpers
  store.py    conversations in SQLite (WAL, one transaction per change)
  render.py   model markdown -> sanitised HTML (markdown-it-py, Pygments, latex2mathml, nh3)
  static/     the chat app's page, script and style
"""
