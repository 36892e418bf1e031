"""Voice scam scoring, one module per concern.

- ``features``: audio decoding and limits, acoustic and text features;
- ``model``: the scoring model, recognition (ASR) and ``score_clip``;
- ``jobs``: the voice job rows (create, claim, lease, complete, fail, sweep) and audio reads;
- ``workers``: remote workers that pull jobs over HTTP (tokens, heartbeats, listing).
"""
