"""Names the dead-code check (vulture, run by .ci/run) must not report, each with why it is alive.

Read by vulture only; never imported.
"""
# ruff: noqa
_ = object()

# Fields of JSON documents other programs read (bundle manifest, verdicts, metrics): written, never read back here.
_.width_px, _.orientation_deg, _.width_mm, _.learned_confidence, _.image_index, _.image_name, _.objtype
_.neighbourhood, _.n_queries, _.requested, _.calibration_images, _.parity_rel_rms, _.score_rel_error_median
_.score_correlation, _.features_ms_float, _.features_ms_int8, _.input, _.n_bank_images, _.schema_, _.product
_.conditions, _.source_seq, _.hash, _.inference, _.camera, _.latency_ms, _.bad_frames, _.dropped, _.interpolation
# `linesight segment`'s report.json (SegmentationReport, ClassScore): read by people and, next, by #17 slice 3's
# evaluate and bundle; written, never read back here.
_.true_pixels, _.predicted_pixels, _.heldout_images, _.background_iou, _.image_auroc_note, _.onnx_max_abs_diff
_.onnx_tolerance
# A project's metadata.json: when it last changed, for people and tools reading the folder (workspace.record).
_.modified
# Every fail-safe reason is a member of the FailSafe enum; metrics and the schema enumerate them.
_.DEADLINE_MISSED, _.FRAME_DROPPED, _.INFERENCE_ERROR, _.NO_MODEL, _.CAMERA_ERROR, _.BAD_FRAME, _.ALIGNMENT_FAILED
# Attributes set on library objects (paho properties, onnxruntime options, faiss, numpy flags, harvesters).
_.MessageExpiryInterval, _.ContentType, _.intra_op_num_threads, _.graph_optimization_level, _.is_trained
_.max_level, _.ntotal, _.efConstruction, _.writeable, _.timeout_period_on_update_event_data_call
# Called by frameworks: torch (forward, removed ResNet heads), onnxruntime calibration (get_next), http.server.
_.forward, _.layer4, _.avgpool, _.fc, _.get_next, _.do_GET, _.log_message, _.server_version, _.daemon_threads
_.collect, _.model_config
# Public API for integrators and tooling (documented; tests drive them): a received verdict parsed strictly, the
# schema written to docs/verdict.schema.json, metrics records and pixel AUROC for bench scripts.
_.parse, _.schema_json, _.EvalRecord, _.pixel_auroc
# TrendMonitor.state, read by integrators, tests/test_trends.py and docs/trends.md's reader: what each chart was
# designed for (in-control level) and how much of the burn-in is left.
_.in_control, _.burn_in_left
# FeedbackRecord.model_hash: written with every feedback record (which model gave the corrected verdict), read by
# people and the UI, not by linesight itself.
_.model_hash
# Fields of the UI's JSON answers (cli/ui): read by the pages' script and API clients, not by Python.
_.bad_messages, _.last_message_age_s, _.frame_seq, _.overlay_png, _.defect_types, _.looked_at, _.stopped_early
_.elapsed_s, _.eta_s, _.val_auroc, _.started, _.feedback_pending, _.then, _.current_threshold, _.evaluation
_.score_chart, _.ng_chart, _.type_charts  # TrendPoint: the Trends page draws them
# expat parser callbacks set by trainer/labels.py's XML reader (called by expat, never by linesight).
_.StartDoctypeDeclHandler, _.EntityDeclHandler, _.StartElementHandler, _.EndElementHandler, _.CharacterDataHandler
# Issue #17's label readers (trainer/labels.py), public API of its first slice: tests/test_labels.py drives them; the
# supervised head that trains on them is the next slice.
_.read_labels, _.class_mask
