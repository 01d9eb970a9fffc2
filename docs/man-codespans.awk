# man-codespans.awk: docs/NAME.1.md as pandoc should read it for the man
# page (dist/CMakeLists.txt runs it before docs/man.lua). A code span
# broken over two lines of an indented block (a definition's text) keeps
# the next line's indentation in pandoc 2.17: `certificate<newline>
# sha256` became "certificate   sha256" on the page, so a message or a
# command copied from it was not the one the program prints or takes.
# A line that ends inside a code span is joined with the next one, by
# one space, that line's indentation dropped (so that it cannot start a
# block of its own). A span opens with a run of N backticks and closes
# at the next run of exactly N (``a `b` c``); outside a span a backslash
# makes the next character literal (\` opens none), inside one it is
# itself literal. Fenced blocks (``` or ~~~) are left as they are, no
# span crosses a blank line, and none a table row (a line starting with
# |, whose cells pandoc reads alone): joined, an unmatched backtick in a
# row took the next rows into it and the table apart
# (tests/lint/man-codespans.py checks the pages read the same).
function flush() { if (held != "") { print held; held = "" } }
fence == "" && /^[ \t]*(```|~~~)/ { flush(); open = 0; fence = substr($0, match($0, /[`~]/), 1); print; next }
fence != "" { if ($0 ~ ("^[ \t]*" (fence == "`" ? "```" : "~~~"))) fence = ""; print; next }
/^[ \t]*$/ { flush(); open = 0; print; next }
{
  line = $0
  if (open) sub(/^[ \t]+/, "", line)
  rest = line
  while (match(rest, /\\.|`+/)) {
    if (substr(rest, RSTART, 1) == "\\") {
      # escaped outside a span; inside one only the backslash is passed
      rest = substr(rest, RSTART + (open ? 1 : 2))
      continue
    }
    if (open == 0)
      open = RLENGTH
    else if (RLENGTH == open)
      open = 0
    rest = substr(rest, RSTART + RLENGTH)
  }
  held = held == "" ? line : held " " line
  if (line ~ /^[ \t]*\|/)
    open = 0
  if (!open)
    flush()
}
END { flush() }
