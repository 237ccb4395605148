"""The Gradio page of ``run_pipeline.py app`` (the only module that imports Gradio).

Left: a video (upload, or an example), the sentences, the options that matter and Run. Right,
after a job: the overlay video, the fusion decision of each sentence, mask frames per sentence
and ``masks.zip``. A job the app cannot run shows its one-line reason in the page; the server
keeps serving. Jobs share one queue that runs one at a time (the models sit on one device).
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from referdino_plus.app import (
    CONFIGURED_SAM2,
    DECISION_HEADERS,
    App,
    JobRequest,
    decision_rows,
    parse_sentences,
)
from referdino_plus.segmenter import DemoError, StageProgress

logger = logging.getLogger(__name__)

TITLE = "ReferDINO-Plus"
INTRO = (
    "Referring video object segmentation: ReferDINO proposes, SAM 2 refines, a fusion rule "
    "decides. Upload a clip (or pick an example), write one sentence per line naming what to "
    "segment, and Run."
)
# The decision table: a plain HTML table laid out by the browser. Every column but the
# sentence and the output is one line as wide as its content (never "queri es" or "#ff464 6");
# those two wrap between words only (a word longer than the column still breaks rather than
# spill over).
WRAPPING_COLUMNS = frozenset({"sentence", "output"})
PAGE_CSS = """
#decisions table { width: 100%; border-collapse: collapse; }
#decisions th, #decisions td {
  padding: 6px 8px; text-align: left; vertical-align: top; white-space: nowrap;
  border-bottom: 1px solid var(--border-color-primary);
}
#decisions th { font-weight: 600; }
#decisions .wraps { white-space: normal; word-break: normal; overflow-wrap: break-word; }
#decisions .swatch {
  display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.35em;
  vertical-align: -0.05em; border-radius: 2px;
}
"""
NO_DECISIONS = "<p>The fusion decision of each sentence shows here after a job.</p>"
# Jobs that use the device share this queue (one at a time).
DEVICE_QUEUE = "device"
SECONDS_PER_HOUR = 3600


def page_error(message: str) -> gr.Error:
    """The modal that shows ``message`` until closed (no traceback)."""
    return gr.Error(html.escape(message), duration=None, print_exception=False, title="Cannot run")


def gradio_progress(progress: gr.Progress) -> Any:
    """A :data:`~referdino_plus.segmenter.ProgressCallback` moving Gradio's bar: one pass of the
    bar per step, described as ``step: detail``."""

    def report(update: StageProgress) -> None:
        description = f"{update.step}: {update.detail}" if update.detail else update.step
        progress(update.fraction, desc=description)

    return report


def decision_table(summary: dict[str, Any]) -> str:
    """The page's table of :func:`~referdino_plus.app.decision_rows` as HTML (text escaped; the
    sentence's direction is the browser's to find: ``dir="auto"``)."""

    def cell(header: str, value: Any, tag: str) -> str:
        attributes = ' class="wraps"' if header in WRAPPING_COLUMNS else ""
        if header == "sentence" and tag == "td":
            attributes += ' dir="auto"'
        text = html.escape(str(value))
        if header == "colour" and tag == "td":
            text = f'<span class="swatch" style="background:{text}"></span>{text}'
        return f"<{tag}{attributes}>{text}</{tag}>"

    head = "".join(cell(header, header, "th") for header in DECISION_HEADERS)
    body = "".join(
        "<tr>"
        + "".join(cell(h, v, "td") for h, v in zip(DECISION_HEADERS, row, strict=True))
        + "</tr>"
        for row in decision_rows(summary)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_page(app: App) -> gr.Blocks:
    """The page, its events and its queue (not yet serving: :func:`launch`)."""
    cfg, limits = app.cfg, app.cfg.app
    sources = {example.label: example for example in app.examples}
    sam2_labels = [(f"configured: {Path(cfg.stage2.model).stem}", CONFIGURED_SAM2)]
    sam2_labels += [(name, name) for name in app.sam2_choices[1:]]

    def pick_example(label: str | None) -> tuple[Any, str | None]:
        """Show the example's preview and remember its source (a frame folder stays one)."""
        example = sources.get(label or "")
        if example is None:
            return gr.update(), None
        return str(example.preview), str(example.source)

    def run_job(
        video: str | None,
        example: str | None,
        text: str,
        frame_step: float,
        max_frames: float,
        sam2: str,
        prompt: str,
        tracker: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a bar
    ) -> tuple[str, str, list[tuple[str, str]], str]:
        try:
            source = example or video
            if not source:
                raise DemoError("no video: upload one or pick an example")
            request = JobRequest(
                source=Path(source),
                sentences=parse_sentences(text, limits.max_sentences),
                frame_step=int(frame_step),
                max_frames=int(max_frames),
                sam2=sam2,
                prompt=prompt,
                tracker=tracker,
            )
            result = app.run(request, progress=gradio_progress(progress))
        except DemoError as err:
            logger.warning("job refused: %s", err)
            raise page_error(str(err)) from None
        except Exception:
            logger.exception("job failed")
            raise page_error(
                "the job failed unexpectedly; the server's log has the details"
            ) from None
        gallery = [(str(path), caption) for path, caption in result.gallery]
        return str(result.overlay), decision_table(result.summary), gallery, str(result.masks_zip)

    cache_seconds = round(limits.cache_hours * SECONDS_PER_HOUR)
    with gr.Blocks(
        title=TITLE,
        analytics_enabled=False,
        # (how often, age): Gradio deletes its copies of uploads and results
        delete_cache=(min(SECONDS_PER_HOUR, cache_seconds), cache_seconds),
    ) as page:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        if app.startup_problem:
            gr.Markdown(f"**The models are not loaded:** {html.escape(app.startup_problem)}")
        example_source = gr.State(None)
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], elem_id="video-input")
                example = gr.Dropdown(
                    choices=list(sources), value=None, label="or an example", elem_id="example"
                )
                sentences = gr.Textbox(
                    label="Sentences, one per line",
                    lines=3,
                    placeholder="the dog running to the left\nthe man in the red coat",
                    elem_id="sentences",
                )
                with gr.Accordion("Options", open=True):
                    frame_step = gr.Slider(
                        1, limits.max_frame_step, value=1, step=1, label="Frame step"
                    )
                    max_frames = gr.Slider(
                        1,
                        limits.max_frames,
                        value=limits.default_max_frames,
                        step=1,
                        label="Max frames",
                    )
                    sam2 = gr.Dropdown(sam2_labels, value=CONFIGURED_SAM2, label="SAM 2")
                    prompt = gr.Radio(
                        app.prompt_choices, value=str(cfg.stage2.prompt), label="SAM 2 prompt"
                    )
                    tracker = gr.Radio(
                        app.tracker_choices, value=str(cfg.stage2.tracker), label="Tracker"
                    )
                run = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                overlay = gr.Video(label="Overlay", interactive=False, elem_id="overlay")
                decisions = gr.HTML(
                    NO_DECISIONS,
                    label="Fusion decision per sentence",
                    show_label=True,
                    container=True,
                    padding=True,
                    elem_id="decisions",
                )
                gallery = gr.Gallery(
                    label="Mask frames per sentence",
                    columns=limits.gallery_frames,
                    height="auto",
                    object_fit="contain",
                    elem_id="mask-frames",
                )
                masks_zip = gr.File(
                    label="Masks: <sentence>/<frame>.png, 0/255",
                    interactive=False,
                    elem_id="masks-zip",
                )
        example.input(pick_example, [example], [video, example_source])
        # An uploaded or cleared video replaces the example.
        video.upload(lambda: (None, None), None, [example, example_source])
        video.clear(lambda: (None, None), None, [example, example_source])
        run.click(
            run_job,
            [video, example_source, sentences, frame_step, max_frames, sam2, prompt, tracker],
            [overlay, decisions, gallery, masks_zip],
            concurrency_limit=1,
            concurrency_id=DEVICE_QUEUE,
        )
    page.queue(default_concurrency_limit=1, max_size=limits.queue_size)
    return page


def launch(page: gr.Blocks, app: App) -> None:
    """Serve ``page`` on ``app.host``:``app.port`` until interrupted."""
    limits = app.cfg.app
    served = {str(app.results_dir), *(str(e.preview.parent) for e in app.examples)}
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own requests to itself
    logger.info("serving on http://%s:%d (Ctrl+C stops)", limits.host, limits.port)
    page.launch(
        server_name=limits.host,
        server_port=limits.port,
        max_file_size=f"{limits.max_upload_mb}mb",
        allowed_paths=sorted(served),
        ssr_mode=False,
        css=PAGE_CSS,
        show_error=False,
        quiet=True,
    )
