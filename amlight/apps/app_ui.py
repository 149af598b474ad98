"""The Gradio UI of ``amlight app``: widgets wired to amlight/apps/app_logic.py, nothing more.

Tabs: Generate (exemplar + target, settings, result, every mode side by side), Edit (click to paint a
class with a brush on the target, or start from the exemplar's labels), Link (click an exemplar region,
then a target region: a one-to-one link), Look (click a target pixel: its attention over the exemplar).
Every handler turns an :class:`~amlight.apps.app_logic.AppInputError` (or any other failure) into one
line in the status box: the user never sees a stack trace. Gradio is imported here only (the ``app``
extra), after analytics are switched off.
"""
import functools
import os
import socket
from dataclasses import dataclass, field

import numpy as np
import torch

from amlight.apps import app_logic as A
from amlight.modules.attention_modes import ATTENTION_MODES
from amlight.pipeline.schedulers import SCHEDULERS

SHOWN = 256  # label maps and images are shown about this many pixels wide, so a click can aim


def import_gradio():
    """gradio with its analytics (and its version check) off: the app talks to no one."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_TELEMETRY_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit("amlight app needs gradio: pip install 'amlight[app]' (or pip install gradio)") from None
    return gr


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Session:
    """What one browser tab is working on (tensors at the model's size)."""

    exemplar_image: torch.Tensor | None = None
    exemplar_labels: torch.Tensor | None = None
    target: torch.Tensor | None = None
    links: list = field(default_factory=list)
    pending: torch.Tensor | None = None  # an exemplar region clicked, waiting for its target region


def build_app(pipe, space, data_root: str | None = None, steps: int = 20):
    """The gr.Blocks app on a loaded pipeline and its label space (``steps``: the sampling steps it starts with)."""
    gr = import_gradio()
    cache = A.BankCache()
    size = tuple(pipe.resolution)
    scale = max(1, SHOWN // size[1])
    modes = A.available_modes(pipe)
    classes = [f"{i} {n}" for i, n in enumerate(space.metadata.class_names)]
    shared = {"source": None, "index": None, "name": None}

    def labels_view(labels, links=()):
        return A.draw_links(A.show_labels(labels, space), list(links), scale)

    def image_view(image, links=()):
        return A.draw_links(A.show_image(image), list(links), scale)

    def settings(mode, steps, scheduler, guidance, strength, seed):
        return A.Settings(mode, int(steps), scheduler, float(guidance), float(strength), int(seed))

    def need(s: Session, target: bool = True):
        if s.exemplar_image is None:
            raise A.AppInputError("no exemplar yet: upload an exemplar image and its label map, or load one from a dataset")
        if target and s.target is None:
            raise A.AppInputError("no target label map yet: upload one, or use the exemplar's labels")

    def safely(fn, n_outputs):
        """Run a handler; on failure keep the outputs as they are and say why in the status line.
        (functools.wraps keeps the signature: gradio injects SelectData and Progress by it.)"""
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except A.AppInputError as e:
                message = f"Error: {e}"
            except Exception as e:  # noqa: BLE001 - the app shows one line, never a trace
                text = str(e).strip().splitlines()
                message = f"Error: {type(e).__name__}: {text[0] if text else ''}"
            return tuple([gr.update()] * (n_outputs - 1)) + (message,)
        return wrapped

    def progress_of(progress):
        return lambda i, n: progress((i, n), desc="sampling")

    with gr.Blocks(title="amlight: exemplar-based semantic image synthesis", analytics_enabled=False) as demo:
        state = gr.State(Session())
        gr.Markdown("## amlight: draw a label map in the appearance of an exemplar (AM-Adapter)")
        status = gr.Textbox(label="status", value="upload an exemplar and its labels, or load one from a dataset",
                            interactive=False, elem_id="status")
        legend = gr.HTML(A.legend_html(space), elem_id="legend")
        with gr.Tab("Generate"):
            with gr.Row():
                ex_image_file = gr.File(label="exemplar image", elem_id="ex_image_file")
                ex_labels_file = gr.File(label="exemplar label map (index or palette PNG)", elem_id="ex_labels_file")
                tgt_file = gr.File(label="target label map", elem_id="tgt_file")
            with gr.Row():
                load_btn = gr.Button("use these files", elem_id="load_btn")
                same_btn = gr.Button("target = exemplar's labels", elem_id="same_btn")
            with gr.Accordion("pick from a dataset", open=False):
                with gr.Row():
                    data_name = gr.Textbox(label="dataset name or folder", value=space.metadata.name)
                    data_item = gr.Number(label="item", value=0, precision=0)
                    pick_btn = gr.Button("load as exemplar", elem_id="pick_btn")
                    pick_target_btn = gr.Button("load its labels as target", elem_id="pick_target_btn")
                    propose_btn = gr.Button("propose exemplars for the target")
                proposals = gr.Textbox(label="best exemplars for the target (items)", interactive=False)
            with gr.Row():
                mode = gr.Dropdown(modes, value=modes[-1] if "adapter" in modes else modes[0], label="mode")
                default_steps = steps
                steps = gr.Slider(1, 100, value=default_steps, step=1, label="steps")
                scheduler = gr.Dropdown(list(SCHEDULERS), value="ddim", label="scheduler")
                guidance = gr.Slider(1.0, 10.0, value=3.0, step=0.5, label="guidance")
                strength = gr.Slider(0.0, 3.0, value=1.0, step=0.1, label="appearance strength")
                seed = gr.Number(value=0, precision=0, label="seed")
            with gr.Row():
                gen_btn = gr.Button("generate", variant="primary", elem_id="gen_btn")
                all_btn = gr.Button("all modes side by side", elem_id="all_btn")
            with gr.Row():
                ex_view = gr.Image(label="exemplar", interactive=False, elem_id="ex_view", format="png")
                tgt_view = gr.Image(label="target labels", interactive=False, elem_id="tgt_view", format="png")
                result = gr.Image(label="result", interactive=False, elem_id="result", format="png")
            gallery = gr.Gallery(label="modes", columns=len(ATTENTION_MODES), elem_id="gallery", format="png")
        with gr.Tab("Edit"):
            gr.Markdown("Pick a class and a brush size, then click on the target labels to paint.")
            with gr.Row():
                paint_class = gr.Dropdown(classes, value=classes[0], label="class")
                radius = gr.Slider(0, 8, value=2, step=1, label="brush radius (pixels of the label map)")
                from_exemplar = gr.Button("start from the exemplar's labels", elem_id="from_exemplar")
            with gr.Row():
                edit_view = gr.Image(label="target labels (click to paint)", interactive=False, elem_id="edit_view", format="png")
                edit_result = gr.Image(label="result", interactive=False, elem_id="edit_result", format="png")
            regen_btn = gr.Button("regenerate", variant="primary", elem_id="regen_btn")
        with gr.Tab("Link"):
            gr.Markdown("Click a region of the exemplar, then one of the target: the two are linked "
                        "(hard_mask / adapter modes honour links).")
            with gr.Row():
                link_ex = gr.Image(label="exemplar labels (click a region)", interactive=False, elem_id="link_ex", format="png")
                link_tgt = gr.Image(label="target labels (click its partner)", interactive=False, elem_id="link_tgt", format="png")
                link_result = gr.Image(label="result", interactive=False, elem_id="link_result", format="png")
            with gr.Row():
                clear_btn = gr.Button("clear links")
                link_btn = gr.Button("regenerate with links", variant="primary", elem_id="link_btn")
        with gr.Tab("Look"):
            gr.Markdown("Click a target pixel: where it attends in the exemplar, per mode (columns) and "
                        "layer group (rows).")
            timestep = gr.Slider(0, 999, value=500, step=1, label="timestep")
            with gr.Row():
                look_view = gr.Image(label="target labels (click a pixel)", interactive=False, elem_id="look_view",
                                     format="png")
                gr.Markdown("")  # keeps the clickable map at half width, as on the other tabs
            # Its own full-width row, no label: the panel has its own title and column headers.
            look_panel = gr.Image(show_label=False, interactive=False, elem_id="look_panel", format="png")
            look_text = gr.Textbox(label="share of the point's exemplar attention on its class", interactive=False,
                                   elem_id="look_text")

        views = [ex_view, tgt_view, edit_view, link_ex, link_tgt, look_view, legend]

        def all_views(s: Session):
            ex = image_view(s.exemplar_image) if s.exemplar_image is not None else None
            tgt = labels_view(s.target) if s.target is not None else None
            lx = labels_view(s.exemplar_labels, [k.exemplar for k in s.links]) if s.exemplar_labels is not None else None
            lt = labels_view(s.target, [k.target for k in s.links]) if s.target is not None else None
            shown = [m for m in (s.exemplar_labels, s.target) if m is not None]
            return [ex, tgt, tgt, lx, lt, tgt, A.legend_html(space, shown)]

        def use_files(s, ex_img, ex_lab, tgt):
            if ex_img is not None or ex_lab is not None:
                if ex_img is None or ex_lab is None:
                    raise A.AppInputError("an exemplar needs both its image and its label map")
                image = A.read_image(ex_img, size, "exemplar image")
                labels = A.read_labels(ex_lab, space, size, "exemplar label map", image_shape=A.image_shape(ex_img))
                s = Session(image, labels, s.target)
            if tgt is not None:
                s = Session(s.exemplar_image, s.exemplar_labels, A.read_labels(tgt, space, size, "target label map"))
            need(s, target=False)
            return [s, *all_views(s), "inputs loaded"]

        def same_labels(s):
            need(s, target=False)
            s = Session(s.exemplar_image, s.exemplar_labels, s.exemplar_labels.clone())
            return [s, *all_views(s), "target = the exemplar's labels (segmentation-based editing)"]

        def item_of(name, item):
            if shared["source"] is None or shared["name"] != name:
                shared["source"], _ = A.dataset_entries(name, data_root)
                shared["name"], shared["index"] = name, None
            source = shared["source"]
            if not 0 <= int(item) < len(source):
                raise A.AppInputError(f"dataset {name!r} has items 0..{len(source) - 1}")
            return A.dataset_item(source, int(item), space, size)

        def pick(s, name, item):
            image, labels = item_of(name, item)
            s = Session(image, labels, s.target if s.target is not None else labels.clone())
            return [s, *all_views(s), f"exemplar: item {int(item)} of {name}"]

        def pick_target(s, name, item):
            _, labels = item_of(name, item)
            s = Session(s.exemplar_image, s.exemplar_labels, labels)
            return [s, *all_views(s), f"target: the labels of item {int(item)} of {name}"]

        def propose(s, name):
            need(s)
            if shared["source"] is None or shared["name"] != name:
                shared["source"], _ = A.dataset_entries(name, data_root)
                shared["name"], shared["index"] = name, None
            best, shared["index"] = A.propose_exemplars(shared["source"], s.target, space, 4, shared["index"])
            return ", ".join(map(str, best)), f"proposed exemplars: {best}"

        def run(s, mode_, steps_, sched, guid, strg, seed_, progress=gr.Progress()):
            need(s)
            image = A.generate(pipe, cache, s.exemplar_image, s.exemplar_labels, s.target,
                               settings(mode_, steps_, sched, guid, strg, seed_), on_step=progress_of(progress))
            return image_view(image), f"generated ({mode_}, {int(steps_)} steps; inversions so far: {cache.builds})"

        def run_all(s, mode_, steps_, sched, guid, strg, seed_, progress=gr.Progress()):
            need(s)
            pictures = A.modes_side_by_side(pipe, cache, s.exemplar_image, s.exemplar_labels, s.target,
                                            settings(mode_, steps_, sched, guid, strg, seed_), progress_of(progress))
            return [(A.draw_links(p, [], scale), m) for p, m in pictures], f"generated {len(pictures)} modes"

        def paint(s, cls, rad, evt: gr.SelectData):
            need(s)
            shown = (size[0] * scale, size[1] * scale)
            point = A.click_to_pixel(evt.index, shown, size)
            s.target = A.paint_brush(s.target, int(str(cls).split()[0]), [point], int(rad), space.num_classes)
            s.links = []  # a link's target region may no longer exist
            return [s, *all_views(s), f"painted {cls} at {point}"]

        def click_exemplar(s, evt: gr.SelectData):
            need(s)
            point = A.click_to_pixel(evt.index, (size[0] * scale, size[1] * scale), size)
            s.pending = A.connected_region(s.exemplar_labels, point)
            name = space.class_name(int(s.exemplar_labels[point]))
            views_ = all_views(s)
            views_[3] = A.draw_links(A.show_labels(s.exemplar_labels, space), [k.exemplar for k in s.links] + [s.pending], scale)
            return [s, *views_, f"exemplar region: {name} at {point}; now click its partner in the target"]

        def click_target(s, evt: gr.SelectData):
            need(s)
            if s.pending is None:
                raise A.AppInputError("click a region of the exemplar first")
            point = A.click_to_pixel(evt.index, (size[0] * scale, size[1] * scale), size)
            s.links = s.links + [A.Link(s.pending, A.connected_region(s.target, point))]
            s.pending = None
            return [s, *all_views(s), f"{len(s.links)} link(s)"]

        def clear(s):
            s.links, s.pending = [], None
            return [s, *all_views(s), "links cleared"]

        def run_links(s, mode_, steps_, sched, guid, strg, seed_, progress=gr.Progress()):
            need(s)
            t_match, x_match = A.build_links(s.links, s.target, s.exemplar_labels, pipe.num_classes, pipe.ignore_index)
            if mode_ not in ("hard_mask", "adapter"):
                mode_ = "adapter" if "adapter" in modes else "hard_mask"
            image = A.generate(pipe, cache, s.exemplar_image, s.exemplar_labels, s.target,
                               settings(mode_, steps_, sched, guid, strg, seed_), target_match=t_match,
                               exemplar_match=x_match, on_step=progress_of(progress))
            return image_view(image), f"generated with {len(s.links)} link(s) ({mode_})"

        def look_at(s, t, seed_, evt: gr.SelectData):
            need(s)
            point = A.click_to_pixel(evt.index, (size[0] * scale, size[1] * scale), size)
            figure, shares = A.look(pipe, space, s.exemplar_image, s.exemplar_labels, s.target, point,
                                    timestep=int(t), seed=int(seed_))
            text = "; ".join(f"{m}: " + ", ".join(f"{g} {v:.2f}" for g, v in by.items()) for m, by in shares.items())
            return np.asarray(figure), text, f"attention of {point}"

        knobs = [mode, steps, scheduler, guidance, strength, seed]
        out_views = [state, *views, status]
        load_btn.click(safely(use_files, len(out_views)), [state, ex_image_file, ex_labels_file, tgt_file], out_views)
        same_btn.click(safely(same_labels, len(out_views)), [state], out_views)
        from_exemplar.click(safely(same_labels, len(out_views)), [state], out_views)
        pick_btn.click(safely(pick, len(out_views)), [state, data_name, data_item], out_views)
        pick_target_btn.click(safely(pick_target, len(out_views)), [state, data_name, data_item], out_views)
        propose_btn.click(safely(propose, 2), [state, data_name], [proposals, status])
        gen_btn.click(safely(run, 2), [state, *knobs], [result, status])
        all_btn.click(safely(run_all, 2), [state, *knobs], [gallery, status])
        regen_btn.click(safely(run, 2), [state, *knobs], [edit_result, status])
        edit_view.select(safely(paint, len(out_views)), [state, paint_class, radius], out_views)
        link_ex.select(safely(click_exemplar, len(out_views)), [state], out_views)
        link_tgt.select(safely(click_target, len(out_views)), [state], out_views)
        clear_btn.click(safely(clear, len(out_views)), [state], out_views)
        link_btn.click(safely(run_links, 2), [state, *knobs], [link_result, status])
        look_view.select(safely(look_at, 3), [state, timestep, seed], [look_panel, look_text, status])
    return demo


def launch(demo, port: int | None = None, block: bool = True):
    """Serve on 127.0.0.1 only: no share link, no API docs page, system fonts (nothing fetched)."""
    gr = import_gradio()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    port = port or free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=not block,
                        quiet=True, theme=theme, footer_links=[], inbrowser=False)
    return port
