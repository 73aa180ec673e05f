#!/bin/sh
# One HTTP exchange of the guest's envd stand-in, run by `nc -ll -e` with the connection
# on stdin/stdout: read the request line, the headers and any Content-Length body (a
# socket closed with unread data would send RST), then answer like envd and close.
# Same answers as lab-vmm's userspace guest (src/http.rs).
cr=$(printf '\r')
read -r -t 5 method target version || exit 0
len=0
while read -r -t 5 line; do
    line=${line%"$cr"}
    [ -z "$line" ] && break
    case "$line" in
        [Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]:*)
            set -- ${line#*:}
            len=$1
            ;;
    esac
done
if [ "$len" -gt 0 ] 2>/dev/null; then
    head -c "$len" >/dev/null
fi
case "$method ${target%%\?*}" in
    "GET /health" | "POST /init")
        printf 'HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n' ;;
    *)
        printf 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' ;;
esac
