"""The desk (app.py): a Gradio chat for visitors and a staff tab over the search engine.

render.py   escaped HTML for answers, highlighting, the QR code
store.py    the question/feedback log (SQLite; the interface a PostgreSQL store would implement)
service.py  Desk: search + log, the /search endpoint's function, the staff ranking
ui.py       the Blocks
"""
