-- man.lua: pandoc filter that makes a man page of docs/NAME.1.md
-- (dist/CMakeLists.txt runs it at build time).
--
-- The Markdown pages start with "# name(1)" and use "##" for sections:
-- the title line is dropped (.TH carries it) and every heading moves up
-- one level, sections in capitals as man pages have them. Tables become
-- tagged paragraphs (.TP): tbl tables as wide as these do not fit a
-- terminal and groff warns about them.
--
-- The pages name other documents as the source tree has them
-- (docs/api.md, SECURITY.md, pkcs11-config/README.md), which is right on
-- GitHub and in a checkout; a man page is read where the programs are
-- installed, and there they are in DOCDIR/groupsrv, DOCDIR/exploder or
-- DOCDIR/groupmail (dist/CMakeLists.txt installs them, uncompressed in the
-- packages): each name is written as that installed path. DOCDIR is the
-- "docdir" metadata (CMake passes the installed share/doc). A document
-- of another package than the page's (the page's title is its program
-- and its package) is followed by "in the PACKAGE package": the exploder
-- and groupmail run on hosts without the group server's package, where
-- /usr/share/doc/groupsrv/api.md is not.
local stringify = pandoc.utils.stringify

-- Source-tree name (a Lua pattern, after a frontier so that docs/api.md
-- and pkcs11-config/README.md are not taken again as a bare name) and
-- where it is installed, below DOCDIR.
local installed_docs = {
  {'%f[%w/.-]pkcs11%-config/README%.md', 'groupsrv/pkcs11-tokens.md'},
  {'%f[%w/.-]docs/api%.md', 'groupsrv/api.md'},
  {'%f[%w/.-]docs/operations%.md', 'groupsrv/operations.md'},
  {'%f[%w/.-]docs/scale%-out%.md', 'groupsrv/scale-out.md'},
  {'%f[%w/.-]docs/clients%.md', 'groupsrv/clients.md'},
  {'%f[%w/.-]docs/postfix%.md', 'exploder/postfix.md'},
  {'%f[%w/.-]docs/curl%-recipes%.md', 'groupmail/curl-recipes.md'},
  {'%f[%w/.-]SECURITY%.md', 'groupsrv/SECURITY.md'},
  {'%f[%w/.-]README%.md', 'groupsrv/README.md'},
}
local docdir = nil
local page = nil

-- The text with each source-tree name replaced by its installed path,
-- that path between two MARKs when mark is true.
local MARK = '\1'
local function installed(text, mark)
  if docdir == nil then return text end
  for _, m in ipairs(installed_docs) do
    local path = docdir .. '/' .. m[2]
    local pkg = m[2]:match('^[^/]+')
    if mark then path = MARK .. path .. MARK end
    if mark and page ~= nil and pkg ~= page then
      path = path .. ' in the ' .. pkg .. ' package'
    end
    text = text:gsub(m[1], (path:gsub('%%', '%%%%')))
  end
  return text
end

local function read_docdir(meta)
  if meta.docdir ~= nil then docdir = stringify(meta.docdir) end
  if meta.title ~= nil then page = stringify(meta.title) end
end

-- In running text a path is written raw: \% first (never hyphenated:
-- "/usr/share/doc/group-" at a line's end and "srv/api.md" on the next
-- is not a path a reader can copy) and \: after each slash (a line may
-- break there, without a hyphen: a path longer than the space left on a
-- line is otherwise a groff "cannot adjust line" warning).
local function installed_str(el)
  local text = installed(el.text, true)
  if not text:find(MARK, 1, true) then return nil end
  local out = pandoc.List()
  local in_path = false
  for part in (text .. MARK):gmatch('(.-)' .. MARK) do
    if in_path then
      local roff = part:gsub('\\', '\\e'):gsub('%-', '\\-'):gsub('/', '/\\:')
      out:insert(pandoc.RawInline('man', '\\%' .. roff))
    else
      -- words and spaces (a line may break at each): "in the groupsrv
      -- package" after a path is text of the filter's own
      local first = true
      for w in (part .. ' '):gmatch('(.-) ') do
        if not first then out:insert(pandoc.Space()) end
        if w ~= '' then out:insert(pandoc.Str(w)) end
        first = false
      end
    end
    in_path = not in_path
  end
  return out
end

local function installed_code(el)
  el.text = installed(el.text, false)
  return el
end

-- The inlines of a table cell (a list of Plain or Para blocks).
local function cell_inlines(cell)
  local out = pandoc.List()
  for _, blk in ipairs(cell) do
    if blk.content ~= nil then
      if #out > 0 then out:insert(pandoc.Space()) end
      out:extend(blk.content)
    end
  end
  return out
end

-- Each row becomes one tagged paragraph: the tag is the first cell (for a
-- configuration table "[section] key"), the text is the column with the
-- most words; the other columns follow the tag as "(header: value)".
local function Table(tbl)
  local simple = pandoc.utils.to_simple_table(tbl)
  local headers, rows = simple.headers, simple.rows
  local ncol = #headers
  if ncol < 2 then return nil end
  local is_config = stringify(headers[1]):lower() == 'section' and ncol >= 3
  local first_extra = is_config and 3 or 2
  local length = {}
  for c = 1, ncol do length[c] = 0 end
  for _, row in ipairs(rows) do
    for c = 1, ncol do length[c] = length[c] + #stringify(row[c]) end
  end
  local main = ncol
  for c = first_extra, ncol do
    if length[c] > length[main] then main = c end
  end
  local items = {}
  for _, row in ipairs(rows) do
    local tag = pandoc.List()
    if is_config then
      tag:insert(pandoc.Str('[' .. stringify(row[1]) .. ']'))
      tag:insert(pandoc.Space())
      tag:extend(cell_inlines(row[2]))
    else
      tag:extend(cell_inlines(row[1]))
    end
    for c = first_extra, ncol do
      local value = stringify(row[c])
      if c ~= main and value ~= '' and value ~= '-' then
        tag:insert(pandoc.Space())
        tag:insert(pandoc.Str('(' .. stringify(headers[c]) .. ':'))
        tag:insert(pandoc.Space())
        tag:extend(cell_inlines(row[c]))
        tag:insert(pandoc.Str(')'))
      end
    end
    table.insert(items, {tag, {{pandoc.Para(cell_inlines(row[main]))}}})
  end
  return pandoc.DefinitionList(items)
end

local function Pandoc(doc)
  local blocks = pandoc.List()
  local title_seen = false
  for _, blk in ipairs(doc.blocks) do
    if blk.t == 'Header' and blk.level == 1 and not title_seen then
      title_seen = true
    else
      if blk.t == 'Header' then
        blk.level = math.max(1, blk.level - 1)
        if blk.level == 1 then
          blk.content = {pandoc.Str(stringify(blk.content):upper())}
        end
      end
      blocks:insert(blk)
    end
  end
  return pandoc.Pandoc(blocks, doc.meta)
end

-- The metadata first (docdir), then the names, then the page's shape.
return {
  {Meta = read_docdir},
  {Str = installed_str, Code = installed_code, CodeBlock = installed_code},
  {Table = Table, Pandoc = Pandoc},
}
