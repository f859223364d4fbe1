# One image for the API, the migrations and the workers.
# GPU workers: build with --build-arg EXTRAS=gpu (adds TensorFlow's CUDA libraries).
FROM python:3.11-slim
ARG EXTRAS=""
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tuner_service tuner_service
COPY workers workers
COPY migrations migrations
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"
RUN useradd --create-home tuner
USER tuner
ENV TUNER_HOME=/home/tuner/.tuner
CMD ["tuner", "api", "--host", "0.0.0.0"]
