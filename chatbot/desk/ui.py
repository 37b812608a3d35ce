"""The desk's two Blocks: the visitor chat with the pinned /search and /feedback APIs, and the
staff console (served under /staff behind a login, see chatbot/desk/web.py). They are separate
apps, so no staff event exists in the visitor app under any name or fn_index.

Per-session state only (gr.State): the programme the conversation is on (passed to the search as
its context, so 「それの料金は？」 stays on it), the visitor's audience, the もしかして candidates,
and which chat message answered which question (for 👍/👎). Nothing is shared between visitors.

The chat renders HTML that chatbot.desk.render built from escaped text; markdown is off (a typed
`[x](javascript:…)` or `**` stays text) and Gradio's sanitiser stays on as a second line.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import gradio as gr

from chatbot.corpus import AUDIENCES
from chatbot.desk import render
from chatbot.desk.render import esc

ANY_AUDIENCE = "指定なし"
JST = timezone(timedelta(hours=9))
MAYBE_SHOWN = 3
EXAMPLES = [
    "J-PlatPatで特許を検索したい",
    "起業したばかりで知財の専門家に相談したい",
    "中小企業の外国出願の費用を補助してほしい",
    "大学の研究成果を特許にしたい",
]
NEW_SESSION = {"context": "", "audience": "", "candidates": [], "turns": {}}
CACHE_CLEANING = (600, 3600)  # every 10 minutes, Gradio's temporary files older than an hour go

CSS = """
.desk-title { margin: .2em 0 .1em; font-size: 1.1em; font-weight: 700; }
.desk-crumb { opacity: .75; font-size: .85em; margin: 0 0 .4em; }
.desk-passage { margin: .3em 0; padding: .4em .7em; border-left: 3px solid var(--color-accent); }
.desk-passage mark, .desk-others mark, .desk-suggest mark { background: #ffe58a; color: inherit; padding: 0 1px; }
.desk-src ul, .desk-others ol, .desk-suggest { margin: .2em 0 .2em 1.2em; padding: 0; }
.desk-chat a, .desk-qr a, .desk-passage { overflow-wrap: anywhere; }
.desk-qr { text-align: center; }
.desk-qr-code svg { width: 180px; height: 180px; max-width: 100%; }
#desk-maybe button { white-space: normal; }
@media (max-width: 480px) { .desk-chat { font-size: 15px; } }
footer .show-api, footer .show-api * { color: var(--body-text-color) !important; opacity: 1 !important; }  /* WCAG contrast */
"""


TITLE = "## 相談窓口 — 知的財産の支援施策ガイド\n"


def build(desk) -> gr.Blocks:
    """The visitor app for one Desk (chatbot.desk.service.Desk)."""
    with gr.Blocks(title="madoguchi 相談窓口", analytics_enabled=False, delete_cache=CACHE_CLEANING) as app:
        gr.Markdown(TITLE + "特許庁 年次報告書 第5章「多様なユーザーへの支援・施策」（44施策）から、"
                    "ご質問に合う施策と案内ページをお探しします。答えはすべて資料の本文そのままです。")
        _visitor_tab(desk)
        # concurrency: the queue's default (app.py); the searches themselves share the Desk's workers
        gr.api(desk.api_search, api_name="search")
        gr.api(desk.api_feedback, api_name="feedback")
    return app


def build_staff(desk) -> gr.Blocks:
    """The staff console: served only behind the login (chatbot/desk/web.py)."""
    with gr.Blocks(title="madoguchi 職員用コンソール", analytics_enabled=False, delete_cache=CACHE_CLEANING) as app:
        with gr.Row():
            gr.Markdown("## 職員用コンソール — madoguchi 相談窓口")
            who = gr.Markdown("", elem_id="staff-who")
            gr.Button("ログアウト", link="/staff/logout", size="sm", scale=0, elem_id="staff-logout")
        refresh = _staff_tab(desk)
        app.load(**refresh)

        def whoami(request: gr.Request):
            return f"ログイン中: **{esc(request.username or '')}**"

        app.load(whoami, None, who, api_visibility="private")
    return app


# -- visitor ---------------------------------------------------------------------------------------

def _visitor_tab(desk) -> None:
    session = gr.State(copy.deepcopy(NEW_SESSION))
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            audience = gr.Radio([ANY_AUDIENCE, *AUDIENCES], value=ANY_AUDIENCE, label="あなたは？（選ぶと候補が絞られます）",
                                elem_id="desk-audience")
            chat = gr.Chatbot(label="相談", elem_id="desk-chat", elem_classes="desk-chat", height=520,
                              render_markdown=False, sanitize_html=True, allow_tags=False,
                              latex_delimiters=[], buttons=[], feedback_options=("Like", "Dislike"), layout="panel",
                              placeholder="ご質問をどうぞ。例: 「J-PlatPatで特許を検索したい」")
            with gr.Row(elem_id="desk-maybe", visible=False) as maybe_row:
                gr.Markdown("**もしかして:**")
                maybe = [gr.Button(visible=False, size="sm", variant="secondary") for _ in range(MAYBE_SHOWN)]
            with gr.Row():
                box = gr.Textbox(show_label=False, placeholder="質問を入力して Enter", scale=5,
                                 elem_id="desk-question", max_lines=3, submit_btn="送信")
            with gr.Row():
                clear = gr.Button("会話をクリア", size="sm", elem_id="desk-clear")
            thanks = gr.Markdown("", elem_id="desk-thanks")
            gr.Markdown("質問の例:")
            with gr.Row():
                examples = [gr.Button(q, size="sm", variant="secondary") for q in EXAMPLES]
        with gr.Column(scale=2, min_width=280):
            qr = gr.HTML(render.qr_html(None), elem_id="desk-qr")
            with gr.Accordion("分野から探す", open=True, elem_id="desk-browse"):
                browse = []
                for section, programmes in desk.sections.items():
                    with gr.Accordion(section, open=False):
                        for p in programmes:
                            browse.append((p.key, gr.Button(f"({p.number}) {p.title}", size="sm",
                                                            variant="secondary")))

    answer_outputs = [chat, session, box, qr, maybe_row, *maybe]
    private = {"api_visibility": "private"}  # UI events: not callable from outside

    def maybe_updates(candidates):
        rows = [gr.update(visible=False, value="")] * MAYBE_SHOWN
        for i, key in enumerate(candidates[:MAYBE_SHOWN]):
            rows[i] = gr.update(visible=True, value=desk.programmes[key].title)
        return [gr.update(visible=bool(candidates)), *rows]

    def respond(question, history, state):
        history = list(history or [])
        if not (question or "").strip():
            return [history, state, "", gr.update(), *maybe_updates(state["candidates"])]
        context = state["context"]
        out, _ = desk.ask(question, context=context, audience=state["audience"])
        question = out["query"]  # as the desk took it (scrubbed: a lone surrogate cannot be shown)
        followed = desk.programmes[context].title if context in desk.programmes else ""
        history.append({"role": "user", "content": esc(question)})
        history.append({"role": "assistant", "content": render.answer_html(out, desk.link_titles, followed)})
        confident = out["results"] and out.get("decision", "answer") == "answer"
        best = out["results"][0]["key"] if confident else ""  # a suggestion is not yet the topic
        state["turns"][len(history) - 1] = {"question": question, "key": best}
        if out.get("decision") == "suggest":
            state["candidates"] = [r["key"] for r in out["results"][:render.SUGGESTED]]
        else:
            state["candidates"] = [r["key"] for r in out["results"][1:]] if out["ambiguous"] else []
        panel = gr.update()
        if best:
            state["context"] = best
            panel = render.qr_html(desk.programmes[best])
        return [history, state, "", panel, *maybe_updates(state["candidates"])]

    def show(key, history, state, asked):
        """A programme chosen by a click becomes the conversation's context."""
        history = list(history or [])
        p = desk.programmes[key]
        history.append({"role": "user", "content": esc(asked.format(title=p.title))})
        history.append({"role": "assistant", "content": render.programme_html(p)})
        state["turns"][len(history) - 1] = {"question": asked.format(title=p.title), "key": key}
        state["context"], state["candidates"] = key, []
        return [history, state, gr.update(), render.qr_html(p), *maybe_updates([])]

    # Undocumented rather than private: the tests drive the chat through gradio_client.
    box.submit(respond, [box, chat, session], answer_outputs, api_name="ask", api_visibility="undocumented")
    for button, question in zip(examples, EXAMPLES):
        button.click(lambda h, s, q=question: respond(q, h, s), [chat, session], answer_outputs, **private)
    for key, button in browse:
        button.click(lambda h, s, k=key: show(k, h, s, "「{title}」について知りたい"), [chat, session],
                     answer_outputs, **private)
    for i, button in enumerate(maybe):
        button.click(lambda h, s, i=i: show(s["candidates"][i], h, s, "もしかして:「{title}」")
                     if i < len(s["candidates"]) else [h, s, gr.update(), gr.update(), *maybe_updates([])],
                     [chat, session], answer_outputs, **private)

    def pick_audience(choice, state):
        state["audience"] = "" if choice == ANY_AUDIENCE else choice
        return state

    audience.change(pick_audience, [audience, session], session, **private)

    def reset(state):
        fresh = copy.deepcopy(NEW_SESSION)
        fresh["audience"] = state["audience"]  # who the visitor is does not change with the topic
        return [[], fresh, "", render.qr_html(None), *maybe_updates([]), ""]

    clear.click(reset, session, [*answer_outputs, thanks], **private)
    chat.clear(reset, session, [*answer_outputs, thanks], **private)  # the chat's own 🗑 button

    def vote(data: gr.LikeData, state):
        index = data.index[0] if isinstance(data.index, (list, tuple)) and data.index else data.index
        turn = state["turns"].get(index) if isinstance(index, int) else None
        if turn is None or not isinstance(data.liked, bool):
            return ""  # a retracted vote, or a message that answered nothing
        desk.feedback("visitor", turn["question"], turn["key"], data.liked)
        return "ご意見ありがとうございました。今後の改善に役立てます。"

    chat.like(vote, session, thanks, **private)


# -- staff -----------------------------------------------------------------------------------------

def _staff_tab(desk) -> dict:
    """Search with scores, feedback, and the analytics; returns the refresh event for the tab."""
    staff = gr.State({"question": "", "rows": [], "selected": 0})
    with gr.Row():
        query = gr.Textbox(label="検索（上位10件）", scale=5, elem_id="staff-question", submit_btn="検索")
    flags = gr.Markdown("", elem_id="staff-flags")
    table = gr.Dataframe(headers=["順位", "key", "施策", "score", "URL"], datatype=["number", "str", "str", "number", "str"],
                         interactive=False, wrap=True, elem_id="staff-table")
    passage = gr.HTML("", elem_id="staff-passage")
    with gr.Row():
        up = gr.Button("役に立った", size="sm", elem_id="staff-up")
        down = gr.Button("違った", size="sm", elem_id="staff-down")
    with gr.Row():
        right = gr.Dropdown([(f"{p.key} {p.title}", p.key) for p in desk.programmes.values()], label="正しい施策はこれ",
                            scale=4, elem_id="staff-right")
        correct = gr.Button("質問バンクに登録", size="sm", scale=1, elem_id="staff-correct")
    noted = gr.Markdown("", elem_id="staff-noted")

    def run(question, state):
        out, rows, elapsed = desk.staff_search(question, 10)
        question = out["query"]
        state = {"question": question, "rows": rows, "selected": 0}
        if out.get("message"):
            flag_line = f"⚠️ {out['message']}"
        else:
            flag_line = (f"時間 {elapsed:.0f} ms ・ 該当なし(abstained): **{'はい' if out['abstained'] else 'いいえ'}** ・ "
                         f"あいまい(ambiguous): **{'はい' if out['ambiguous'] else 'いいえ'}** ・ "
                         f"confidence {out['confidence']:.2f}")
        data = [[n, r["key"], r["title"], r["score"], r["urls"][0] if r["urls"] else ""] for n, r in enumerate(rows, 1)]
        return [state, flag_line, data, _staff_passage(rows, 0, question, desk.link_titles), ""]

    query.submit(run, [query, staff], [staff, flags, table, passage, noted], api_name="staff_search")

    def select(evt: gr.SelectData, state):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else int(evt.index)
        state["selected"] = row
        return state, _staff_passage(state["rows"], row, state["question"], desk.link_titles)

    table.select(select, staff, [staff, passage], api_visibility="private")

    def rate(helpful, state, request: gr.Request):
        if not state["question"]:
            return "先に検索してください。"
        rows = state["rows"]
        key = rows[state["selected"]]["key"] if state["selected"] < len(rows) else ""
        done = desk.feedback("staff", state["question"], key, helpful, staff=request.username or "")
        if not done["recorded"]:
            return f"⚠️ 記録できませんでした。{done.get('error', '')}"
        return f"記録しました（{'役に立った' if helpful else '違った'}: {key}）。" + "".join(
            f"\n\n⚠️ {p}" for p in desk.log_problems())

    def rate_up(state, request: gr.Request):
        return rate(True, state, request)

    def rate_down(state, request: gr.Request):
        return rate(False, state, request)

    def relabel(key, state, request: gr.Request):
        if not state["question"]:
            return "先に検索してください。"
        if not key:
            return "正しい施策を選んでください。"
        return desk.correct(state["question"], key, request.username or "")

    up.click(rate_up, staff, noted, api_name="staff_feedback_up")
    down.click(rate_down, staff, noted, api_name="staff_feedback_down")
    correct.click(relabel, [right, staff], noted, api_name="staff_correct")

    with gr.Accordion("集計", open=True):
        refresh = gr.Button("集計を更新", size="sm")
        summary = gr.Markdown("", elem_id="staff-summary")
        per_day = gr.BarPlot(x="日付", y="質問数", color="結果", title="1日あたりの質問数", height=260,
                             elem_id="staff-plot")
        no_match = gr.Dataframe(headers=["該当なしの質問", "回数"], interactive=False, wrap=True,
                                label="よくある「該当なし」の質問", elem_id="staff-nomatch")
        desks = gr.Dataframe(headers=["デスク", "質問数", "最後の質問"], interactive=False, wrap=True,
                             label="デスク別（同じデータベースに記録しているデスクすべて）", elem_id="staff-desks")

    def analytics():
        import pandas as pd  # a gradio dependency; only the staff view needs it

        s = desk.stats()
        votes = s["helpful"] + s["unhelpful"]
        ratio = f"{s['helpful'] / votes:.0%}" if votes else "—"
        lines = [f"質問 {s['questions']} 件 ・ 評価: 役に立った {s['helpful']} / 違った {s['unhelpful']}（役に立った率 {ratio}）",
                 f"記録先: `{s['store']}`（スキーマ {s['schema'] or '—'}）・ このデスク: `{s['replica']}` ・ "
                 f"未書き込み {s['pending']} 件 ・ 日付は日本時間"]
        lines += [f"⚠️ {problem}" for problem in (s.get("error"), s["last_error"], s["spool_error"]) if problem]
        if s["rejected"] or s["lost"]:
            lines.append(f"⚠️ データベースが受け付けなかった記録 {s['rejected']} 件（rejected-*.jsonl に保存）・ "
                         f"失われた記録 {s['lost']} 件")
        frame = pd.DataFrame(
            [(d, n - m, "該当あり") for d, n, m in s["per_day"]] + [(d, m, "該当なし") for d, n, m in s["per_day"]],
            columns=["日付", "質問数", "結果"])
        return ("\n\n".join(lines), frame, [[q, n] for q, n in s["no_match"]],
                [[name or "—", n, _japan_time(last)] for name, n, last in s["replicas"]])

    outputs = [summary, per_day, no_match, desks]
    refresh.click(analytics, None, outputs, api_name="staff_stats")
    return {"fn": analytics, "inputs": None, "outputs": outputs, "api_visibility": "private"}


def _japan_time(iso: str) -> str:
    """The log keeps UTC; the staff read Japan time (UTC+9, no daylight saving)."""
    try:
        return datetime.fromisoformat(str(iso)).astimezone(JST).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(iso)


def _staff_passage(rows: list[dict], i: int, question: str, titles: dict[str, str]) -> str:
    if not rows or i >= len(rows):
        return ""
    r = rows[i]
    return (f'<div class="desk-chat">{render.result_html(r, question, titles)}'
            f'<p class="desk-crumb">key {esc(r["key"])} ・ score {r["score"]}</p></div>')
