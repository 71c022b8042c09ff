"""HTTP translation service: a thin LitServe layer over `nmt.translator.Translator`.

    nmt serve --checkpoint runs/multi30k_de_en_de-en/best.pt --port 8000
    curl -s localhost:8000/translate -H 'Content-Type: application/json' \\
         -d '{"texts": ["Ein Hund rennt."], "beam_size": 5, "alignment": true}'

Endpoints: POST /translate (schemas.TranslateRequest -> schemas.TranslateResponse), POST /align
(forced alignment: schemas.AlignRequest -> schemas.AlignResponse), GET / (the web page in
static/), GET /health (200 once every worker of every model has loaded it, 503 before and while
a dead worker is replaced), GET /info (models and serving settings), GET /languages, GET
/metrics (Prometheus text), LibreTranslate's API under /libretranslate, /docs and
/openapi.json (the schemas). Several `--checkpoint` flags serve several models (models.py).

Modules: models.py (the models hosted, routing), libretranslate.py (LibreTranslate's API),
schemas.py (request/response models, limits), middleware.py (API key, body and
input checks before queueing, request metrics, answers for a dead worker's requests), api.py
(the LitAPI: batching and decoding), metrics.py and shared.py (state shared across server
processes), app.py (building the LitServer), supervisor.py (running it so that SIGINT/SIGTERM
stop every process, and replacing workers that die), and litserve_internals.py (every use of
LitServe beyond its documented API, next to the pin).
"""
