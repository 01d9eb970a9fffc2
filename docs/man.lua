-- man.lua: pandoc filter that makes a man page of docs/NAME.1.md
-- (dist/CMakeLists.txt runs it at build time).
--
-- The Markdown pages start with "# name(1)" and use "##" for sections:
-- the title line is dropped (.TH carries it) and every heading moves up
-- one level, sections in capitals as man pages have them. Tables become
-- tagged paragraphs (.TP): tbl tables as wide as these do not fit a
-- terminal and groff warns about them.
local stringify = pandoc.utils.stringify

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
function Table(tbl)
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

function Pandoc(doc)
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
