"""The desk (app.py): a Gradio chat for visitors and a staff tab over the search engine.

render.py   escaped HTML for answers, highlighting, the QR code
service.py  Desk: search + log (chatbot.store), the /search and /feedback endpoints' functions,
            the staff ranking
ui.py       the Blocks
"""
