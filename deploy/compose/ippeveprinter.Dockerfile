# A real IPP Everywhere printer for the local stack (docker-compose.yml): CUPS'
# ippeveprinter from Debian's cups-ipp-utils. It accepts PDF and PWG raster on port 8631
# at ipp://ippeveprinter:8631/ipp/print and "prints" each job (no paper involved).
#
# It links against Avahi and will not start without a system D-Bus ("Unable to initialize
# DNS-SD"), even with DNS-SD registration off (-r off), so the container runs a private
# dbus-daemon first. No avahi-daemon is needed: with -r off it registers nothing.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends cups-ipp-utils dbus \
 && rm -rf /var/lib/apt/lists/*
EXPOSE 8631
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=5 \
    CMD ["ipptool", "-q", "ipp://localhost:8631/ipp/print", "get-printer-attributes.test"]
CMD ["sh", "-c", "mkdir -p /run/dbus && dbus-daemon --system --fork --nopidfile && exec ippeveprinter -r off -f application/pdf,image/pwg-raster -p 8631 'Print Service Test Printer'"]
