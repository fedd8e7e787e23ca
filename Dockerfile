FROM python:3.11-slim
WORKDIR /app
# ffmpeg: the live view remuxes RTSP cameras into HLS.
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY kernel kernel
COPY iot_gateway iot_gateway
COPY alerts alerts
COPY video_index video_index
COPY command_center command_center
COPY frontend frontend
RUN pip install --no-cache-dir . && useradd --system --home /data cityops && mkdir -p /data && chown cityops /data
USER cityops
ENV CITYOPS_DATA_DIR=/data
EXPOSE 8000
CMD ["cityops", "run", "--http-port", "8000"]
