FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    TEAMINBOX_VAR_DIR=/var/lib/teaminbox
WORKDIR /app
RUN useradd --system --home-dir /var/lib/teaminbox --create-home teaminbox
COPY pyproject.toml README.md manage.py ./
COPY teaminbox ./teaminbox
COPY mailsync ./mailsync
COPY templates ./templates
COPY static ./static
RUN pip install --no-cache-dir . \
    && SECRET_KEY=build-only python manage.py collectstatic --noinput
USER teaminbox
EXPOSE 8000
CMD ["gunicorn", "teaminbox.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
