"""Front doors: other APIs translated onto the one chat-completion call path.

One module per API, each a pair of pure translations: the API's request into a chat
call (``ChatIn``), and a chat answer or chat stream chunks into the API's answer or
events. ``endpoints`` is the HTTP glue; the router, its retries, fallbacks, timeouts
and metrics are the chat endpoint's own.
"""
