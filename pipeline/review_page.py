"""The review page (``lakelabel review``): one batch's images, large, with the classes as buttons and
keys 1–9 (0 for the tenth), ``n`` none of these, ``s`` skip, ``u`` or Backspace undo. Every answer is
written into the batch's ``review.csv`` atomically before the page moves on, so closing the browser or
killing the server loses no answer; reopening resumes at the first unanswered image. Served on
127.0.0.1 by uvicorn; bad requests get a 4xx and change nothing."""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict

from lakelabel.data_specs.batches import list_batches
from lakelabel.data_specs.layout import BatchPaths, Layout
from lakelabel.pipeline.review.batch import BatchAnswers


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    answer: str  # label | none | skip
    label: int | None = None


def find_batch(root: str | Path, name: str | None = None) -> BatchPaths:
    """The batch ``name`` under ``ROOT/batches`` (or a batch folder's path); by default the newest batch
    with unanswered images, else the newest."""
    if name:
        path = Path(name)
        batch = BatchPaths(path) if (path / "review.csv").is_file() else Layout(root).batch(name)
        if not batch.csv.is_file():
            known = ", ".join(b.name for b in list_batches(root)) or "none"
            raise FileNotFoundError(
                f"no review batch {name!r} under {str(Layout(root).batches_dir)!r} (known: {known})"
            )
        return batch
    batches = list_batches(root)
    if not batches:
        raise FileNotFoundError(
            f"no review batches under {str(Layout(root).batches_dir)!r}: run `lakelabel suggest` or "
            "`lakelabel select`"
        )
    open_ones = [b for b in batches if BatchAnswers(b).progress()["next"] is not None]
    return (open_ones or batches)[-1]


def create_app(batch: BatchPaths) -> FastAPI:
    """The page and its JSON API for ``batch``."""
    answers = BatchAnswers(batch)
    app = FastAPI(title=f"lakelabel review: {batch.name}", docs_url=None, redoc_url=None)
    thumbs = batch.thumbs.resolve()

    def items() -> list[dict]:
        t = answers.table
        return [
            {
                "key": r.key,
                "image": f"image/{Path(r.thumbnail).name}",
                "predicted": r.predicted_name,
                "candidates": r.candidates,
                "answer": r.answer,
                "label": r.label,
            }
            for r in t.itertuples()
        ]

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.replace("__TITLE__", html.escape(batch.name))

    @app.get("/api/batch")
    def state() -> dict:
        classes = [{"id": c, "name": n} for c, n in sorted(answers.classes.items())]
        return {"batch": batch.name, "classes": classes, "items": items(), **answers.progress()}

    @app.post("/api/answer")
    def answer(body: Answer) -> dict:
        try:
            return answers.answer(body.key, body.answer, body.label)
        except KeyError as unknown:
            raise HTTPException(404, unknown.args[0]) from None
        except ValueError as bad:
            raise HTTPException(422, str(bad)) from None

    @app.post("/api/undo")
    def undo() -> dict:
        return answers.undo()

    @app.get("/image/{name:path}")
    def image(name: str) -> FileResponse:
        path = (thumbs / name).resolve()
        if not path.is_relative_to(thumbs) or path.parent != thumbs:
            raise HTTPException(404, f"{name!r} is outside the batch's images")
        if not path.is_file():
            raise HTTPException(404, f"no image {name!r} in batch {batch.name!r}")
        return FileResponse(path, media_type="image/png")

    return app


def serve(batch: BatchPaths, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the page until interrupted (answers are on disk as they are given)."""
    import uvicorn

    uvicorn.run(create_app(batch), host=host, port=port, log_level="warning")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Review __TITLE__</title>
<style>
 body{font-family:system-ui,sans-serif;margin:0;background:#111;color:#eee;text-align:center}
 header{padding:.6em;background:#222;display:flex;justify-content:space-between;align-items:center}
 #img{width:min(70vh,90vw);height:min(70vh,90vw);object-fit:contain;image-rendering:pixelated;
      background:#000;margin:1em auto;display:block}
 button{font-size:1.05em;margin:.25em;padding:.5em .9em;border-radius:.4em;border:1px solid #555;
        background:#2a2a2a;color:#eee;cursor:pointer}
 button.hint{border-color:#6cf;background:#1d3a4d} button.chosen{background:#2d5a2d}
 kbd{font-size:.75em;color:#9cf;margin-right:.35em} #hint{color:#aaa;min-height:1.3em}
 #done{display:none;font-size:1.4em;margin:3em}
</style></head><body>
<header><b>__TITLE__</b><span id="progress">…</span><span id="status"></span></header>
<main><img id="img" alt="image to label"><div id="hint"></div><div id="classes"></div>
<div><button id="none"><kbd>n</kbd>none of these</button><button id="skip"><kbd>s</kbd>skip</button>
<button id="undo"><kbd>u</kbd>undo</button></div></main>
<div id="done">Every image of this batch is answered.
Run <code>lakelabel select</code> to learn from it.</div>
<script>
let S = null, cur = 0, chain = Promise.resolve(); const pre = new Image();
// one request at a time, in key order: a fast typist's keys are all kept
function queue(f){ chain = chain.then(f).catch(() => {}); }
const $ = id => document.getElementById(id);
function keyOf(i){ return i < 9 ? String(i + 1) : (i === 9 ? "0" : ""); }
function nextOpen(from){ const n = S.items.length;
  for (let d = 0; d < n; d++){ const i = (from + d) % n; if (!S.items[i].answer) return i; } return null; }
function show(){
  $("progress").textContent = S.answered + " / " + S.total + " answered";
  const main = document.querySelector("main");
  $("done").style.display = cur === null ? "block" : "none";
  main.style.display = cur === null ? "none" : "block";
  if (cur === null) return;
  const it = S.items[cur]; $("img").src = it.image; $("img").dataset.key = it.key;
  $("hint").textContent = it.candidates ? "model: " + it.candidates : "";
  document.querySelectorAll("#classes button").forEach(b =>
    b.classList.toggle("hint", b.dataset.name === it.predicted));
  const nx = nextOpen((cur + 1) % S.items.length); if (nx !== null && nx !== cur) pre.src = S.items[nx].image;
}
async function post(url, body){
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                              body: JSON.stringify(body || {})});
  if (!r.ok){ $("status").textContent = "not saved: " + (await r.text()); throw new Error(r.status); }
  $("status").textContent = "saved"; return r.json();
}
async function answer(kind, label){
  if (cur === null) return; const it = S.items[cur];
  const p = await post("api/answer", {key: it.key, answer: kind, label: label});
  it.answer = kind; it.label = label; Object.assign(S, p); cur = nextOpen((cur + 1) % S.items.length); show();
}
async function undo(){
  const p = await post("api/undo"); Object.assign(S, p);
  if (p.undone !== null){ cur = S.items.findIndex(x => x.key === p.undone); S.items[cur].answer = ""; }
  show();
}
async function load(){
  S = await (await fetch("api/batch")).json();
  $("classes").innerHTML = "";
  S.classes.forEach((c, i) => { const b = document.createElement("button");
    b.dataset.name = c.name; b.dataset.id = c.id;
    b.innerHTML = (keyOf(i) ? "<kbd>" + keyOf(i) + "</kbd>" : "") + c.name.replace(/</g, "&lt;");
    b.onclick = () => queue(() => answer("label", c.id)); $("classes").appendChild(b); });
  cur = S.next; show();
}
$("none").onclick = () => queue(() => answer("none")); $("skip").onclick = () => queue(() => answer("skip"));
$("undo").onclick = () => queue(undo);
document.addEventListener("keydown", e => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  if (/^[0-9]$/.test(k)){
    const i = k === "0" ? 9 : Number(k) - 1;
    if (S && S.classes[i]) queue(() => answer("label", S.classes[i].id));
  }
  else if (k === "n") queue(() => answer("none")); else if (k === "s") queue(() => answer("skip"));
  else if (k === "u" || k === "Backspace"){ e.preventDefault(); queue(undo); }
});
load();
</script></body></html>
"""
