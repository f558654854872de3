#!/bin/sh
# Serves / (a static page, the health check) and /cgi-bin/call, a CGI script that fetches
# $API_URL with busybox wget, with busybox httpd on $PORT.
set -eu
www="${TMPDIR:-/tmp}/frontend-$$"
mkdir -p "$www/cgi-bin"
echo "frontend replica $STRATUS_REPLICA: GET /cgi-bin/call asks $API_URL" > "$www/index.html"
cat > "$www/cgi-bin/call" <<'CGI'
#!/bin/sh
if answer=$(wget -q -O - "$API_URL" 2>&1); then
  printf 'Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n%s\n' "$answer"
else
  printf 'Status: 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\ncannot call %s: %s\n' "$API_URL" "$answer"
fi
CGI
chmod +x "$www/cgi-bin/call"
echo "frontend replica $STRATUS_REPLICA serving on port $PORT, calling $API_URL"
exec busybox httpd -f -p "$PORT" -h "$www"
