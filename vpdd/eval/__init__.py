"""Evaluation of trained VPDD models: closed-loop success rates (``closed_loop``) and the quality of the
predicted future video (``video_quality``)."""
