#!/usr/bin/env node
// Renders an AsyncAPI document as a Markdown reference, using the official parser.
//
//   node .ci/asyncapi/render.mjs asyncapi.yaml build/docs/asyncapi.md
//
// The document is parsed and validated by @asyncapi/parser (the same parser that
// `asyncapi validate` uses). Errors are printed and the script exits 1 without writing;
// warnings are printed and the Markdown is written. Usage errors exit 2.
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, relative, resolve } from 'node:path';
import { DiagnosticSeverity, Parser, fromFile } from '@asyncapi/parser';

const SEVERITY = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};

// ---------------------------------------------------------------------------------------
// Markdown helpers

/** Text for a table cell: no raw pipes, newlines as <br>. */
function cell(value) {
  if (value === undefined || value === null || value === '') return '';
  return String(value).trim().replace(/\|/g, '\\|').replace(/\r?\n/g, '<br>');
}

function code(value) {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return `\`${text.replace(/`/g, "'")}\``;
}

function table(header, rows) {
  if (rows.length === 0) return [];
  return [
    `| ${header.join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map((row) => `| ${row.map(cell).join(' | ')} |`),
    '',
  ];
}

/** A two-column key/value table, skipping empty values. */
function facts(pairs) {
  return table(
    ['', ''],
    pairs.filter(([, value]) => value !== undefined && value !== null && value !== '').map(([k, v]) => [`**${k}**`, v]),
  );
}

function paragraph(text) {
  return text ? [text.trim(), ''] : [];
}

function anchor(kind, id) {
  return `${kind}-${String(id).toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '')}`;
}

function link(kind, id, label = code(id)) {
  return `[${label}](#${anchor(kind, id)})`;
}

function heading(level, kind, id, text) {
  return [`<a id="${anchor(kind, id)}"></a>`, '', `${'#'.repeat(level)} ${text}`, ''];
}

// ---------------------------------------------------------------------------------------
// Bindings

/** Flattens a binding value into [dotted key, JSON value] rows. */
function flatten(value, prefix = '') {
  if (value === null || typeof value !== 'object' || Array.isArray(value) || Object.keys(value).length === 0) {
    return [[prefix, code(value)]];
  }
  return Object.entries(value).flatMap(([key, inner]) => flatten(inner, prefix ? `${prefix}.${key}` : key));
}

function bindings(model, level) {
  const all = model.bindings().all();
  if (all.length === 0) return [];
  const lines = [`${'#'.repeat(level)} Bindings`, ''];
  for (const binding of all) {
    lines.push(`**${binding.protocol()}** (bindingVersion ${code(binding.version())})`, '');
    const rows = Object.keys(binding.value()).length === 0 ? [] : flatten(binding.value());
    lines.push(...(rows.length ? table(['Field', 'Value'], rows) : ['(no fields)', '']));
  }
  return lines;
}

// ---------------------------------------------------------------------------------------
// Schemas

function isNamed(schema) {
  const id = schema.id();
  return Boolean(id) && !id.startsWith('<anonymous');
}

function typeOf(schema) {
  if (schema.isBooleanSchema()) return schema.json() ? 'any' : 'nothing';
  let type = schema.type();
  if (Array.isArray(type)) type = type.join(' \\| ');
  if (!type) {
    for (const [word, list] of [['oneOf', schema.oneOf()], ['anyOf', schema.anyOf()], ['allOf', schema.allOf()]]) {
      if (list && list.length) return `${word}(${list.map(typeOf).join(', ')})`;
    }
    type = schema.enum() ? 'enum' : 'any';
  }
  if (type === 'array') {
    const items = schema.items();
    if (items && !Array.isArray(items)) type = `array of ${typeOf(items)}`;
  }
  if (schema.format()) type += ` (${schema.format()})`;
  if (isNamed(schema)) type += ` — ${schema.id()}`;
  return type;
}

function constraints(schema) {
  const out = [];
  if (schema.deprecated()) out.push('**deprecated**');
  if (schema.enum()) out.push(`one of ${schema.enum().map(code).join(', ')}`);
  if (schema.const() !== undefined) out.push(`const ${code(schema.const())}`);
  if (schema.pattern()) out.push(`pattern ${code(schema.pattern())}`);
  if (schema.minLength() !== undefined) out.push(`minLength ${schema.minLength()}`);
  if (schema.maxLength() !== undefined) out.push(`maxLength ${schema.maxLength()}`);
  if (schema.minimum() !== undefined) out.push(`minimum ${schema.minimum()}`);
  if (schema.maximum() !== undefined) out.push(`maximum ${schema.maximum()}`);
  if (schema.exclusiveMinimum() !== undefined) out.push(`exclusiveMinimum ${schema.exclusiveMinimum()}`);
  if (schema.exclusiveMaximum() !== undefined) out.push(`exclusiveMaximum ${schema.exclusiveMaximum()}`);
  if (schema.minItems() !== undefined) out.push(`minItems ${schema.minItems()}`);
  if (schema.maxItems() !== undefined) out.push(`maxItems ${schema.maxItems()}`);
  if (schema.default() !== undefined) out.push(`default ${code(schema.default())}`);
  if (schema.type() === 'object' && schema.additionalProperties() === false) out.push('no other properties');
  return out.join('; ');
}

/** Rows for every property, nested objects (and arrays of objects) flattened as dotted paths. */
function propertyRows(schema, prefix = '', seen = new Set()) {
  if (!schema || schema.isBooleanSchema() || seen.has(schema.json())) return [];
  const properties = schema.properties() || {};
  const required = new Set(schema.required() || []);
  const rows = [];
  for (const [name, property] of Object.entries(properties)) {
    const path = prefix ? `${prefix}.${name}` : name;
    rows.push([code(path), typeOf(property), required.has(name) ? 'yes' : '', property.description() || '', constraints(property)]);
    const nested = new Set(seen).add(schema.json());
    rows.push(...propertyRows(property, path, nested));
    const items = property.items();
    if (items && !Array.isArray(items)) rows.push(...propertyRows(items, `${path}[]`, nested));
  }
  return rows;
}

function schemaSection(title, schema, level) {
  if (!schema) return [];
  const name = isNamed(schema) ? ` (${code(schema.id())})` : '';
  const lines = [`${'#'.repeat(level)} ${title}${name}`, ''];
  lines.push(...paragraph(schema.description()));
  const rows = propertyRows(schema);
  if (rows.length) {
    lines.push(...table(['Property', 'Type', 'Required', 'Description', 'Constraints'], rows));
  } else {
    lines.push(...facts([['Type', typeOf(schema)], ['Constraints', constraints(schema)]]));
  }
  const extra = constraints(schema);
  if (rows.length && extra) lines.push(`Object: ${extra}.`, '');
  return lines;
}

// ---------------------------------------------------------------------------------------
// Sections

/** The component name of a security scheme (the parser leaves it empty when referenced). */
function schemeId(doc, scheme) {
  if (scheme.id()) return scheme.id();
  const all = doc.components().securitySchemes().all();
  const text = JSON.stringify(scheme.json());
  const found = all.find((c) => c.json() === scheme.json()) || all.find((c) => JSON.stringify(c.json()) === text);
  return found ? found.id() : '(inline)';
}

function security(doc, requirementSets) {
  const alternatives = requirementSets
    .map((set) =>
      set
        .all()
        .map((req) => {
          const scopes = req.scopes().length ? ` (scopes: ${req.scopes().map(code).join(', ')})` : '';
          return `${link('security', schemeId(doc, req.scheme()))}: ${req.scheme().type()}${scopes}`;
        })
        .join(' and '),
    )
    .filter(Boolean);
  return alternatives.join(' or ');
}

function renderInfo(doc, source) {
  const info = doc.info();
  const lines = [`# ${info.title()} ${info.version()}`, ''];
  lines.push(
    `> Generated from ${code(source)} (AsyncAPI ${doc.version()}) by ${code('make docs')} ` +
      'with the official AsyncAPI parser. Do not edit: change the contract and regenerate.',
    '',
  );
  const contact = info.contact();
  const license = info.license();
  lines.push(
    ...facts([
      ['Id', info.id() && code(info.id())],
      ['Default content type', doc.defaultContentType() && code(doc.defaultContentType())],
      ['Contact', contact && [contact.name(), contact.email(), contact.url()].filter(Boolean).join(', ')],
      ['License', license && [license.name(), license.url()].filter(Boolean).join(', ')],
      ['Terms of service', info.termsOfService()],
    ]),
  );
  lines.push(...paragraph(info.description()));
  lines.push(
    '## Contents',
    '',
    '- [Servers](#servers)',
    '- [Channels](#channels)',
    '- [Operations](#operations)',
    '- [Messages](#messages)',
    '- [Security schemes](#security-schemes)',
    '',
  );
  return lines;
}

function renderServers(doc) {
  const lines = ['## Servers', ''];
  for (const server of doc.servers().all()) {
    lines.push(...heading(3, 'server', server.id(), `${code(server.id())}: ${server.protocol()}`));
    lines.push(
      ...facts([
        ['URL', code(server.url())],
        ['Protocol', `${server.protocol()}${server.protocolVersion() ? ` ${server.protocolVersion()}` : ''}`],
        ['Security', security(doc, server.security())],
        ['Channels', server.channels().all().map((c) => link('channel', c.id())).join(', ')],
      ]),
    );
    lines.push(...paragraph(server.description()));
    const variables = server.variables().all();
    if (variables.length) {
      lines.push('#### Variables', '');
      lines.push(
        ...table(
          ['Variable', 'Default', 'Allowed values', 'Description'],
          variables.map((v) => [
            code(v.id()),
            v.defaultValue() === undefined ? '' : code(v.defaultValue()),
            v.allowedValues().map(code).join(', '),
            v.description() || '',
          ]),
        ),
      );
    }
    lines.push(...bindings(server, 4));
  }
  return lines;
}

function renderChannels(doc) {
  const lines = ['## Channels', ''];
  for (const channel of doc.channels().all()) {
    const address = channel.address();
    lines.push(...heading(3, 'channel', channel.id(), `${code(channel.id())}: ${address ? code(address) : '(dynamic address)'}`));
    lines.push(...paragraph(channel.description()));
    lines.push(
      ...facts([
        ['Address', address ? code(address) : 'none: set at run time'],
        ['Servers', channel.servers().all().map((s) => link('server', s.id())).join(', ')],
        ['Messages', channel.messages().all().map((m) => link('message', m.id())).join(', ')],
        ['Operations', channel.operations().all().map((o) => `${link('operation', o.id())} (${o.action()})`).join(', ')],
      ]),
    );
    const parameters = channel.parameters().all();
    if (parameters.length) {
      lines.push('#### Parameters', '');
      lines.push(
        ...table(
          ['Parameter', 'Description', 'Constraints', 'Location'],
          parameters.map((p) => {
            const json = p.json();
            const bits = [];
            if (json.enum) bits.push(`one of ${json.enum.map(code).join(', ')}`);
            if (json.default !== undefined) bits.push(`default ${code(json.default)}`);
            if (json.examples) bits.push(`examples ${json.examples.map(code).join(', ')}`);
            if (p.hasSchema && p.hasSchema()) bits.push(constraints(p.schema()));
            return [code(p.id()), p.description() || '', bits.filter(Boolean).join('; '), p.location() ? code(p.location()) : ''];
          }),
        ),
      );
    }
    lines.push(...bindings(channel, 4));
  }
  return lines;
}

function renderReply(reply) {
  const lines = ['#### Reply', ''];
  const address = reply.address();
  const channel = reply.channel();
  lines.push(
    ...facts([
      ['Channel', channel && `${link('channel', channel.id())}${channel.address() ? ` (${code(channel.address())})` : ''}`],
      ['Address', address && `${code(address.location())}${address.description() ? `: ${address.description()}` : ''}`],
      ['Messages', reply.messages().all().map((m) => link('message', m.id())).join(', ') || 'any message of the channel'],
    ]),
  );
  return lines;
}

function renderOperations(doc) {
  const lines = ['## Operations', ''];
  for (const op of doc.operations().all()) {
    const channels = op.channels().all();
    lines.push(...heading(3, 'operation', op.id(), `${code(op.id())}: ${op.action()} on ${channels.map((c) => code(c.id())).join(', ')}`));
    lines.push(...paragraph(op.summary()));
    lines.push(...paragraph(op.description()));
    const docs = op.externalDocs();
    lines.push(
      ...facts([
        ['Action', op.action()],
        ['Channel', channels.map((c) => `${link('channel', c.id())}${c.address() ? ` (${code(c.address())})` : ''}`).join(', ')],
        ['Messages', op.messages().all().map((m) => link('message', m.id())).join(', ')],
        ['Security', security(doc, op.security())],
        ['Tags', op.tags().all().map((t) => code(t.name())).join(', ')],
        ['More', docs && `[${docs.description() || docs.url()}](${docs.url()})`],
      ]),
    );
    lines.push(...bindings(op, 4));
    const reply = op.reply();
    if (reply) lines.push(...renderReply(reply));
  }
  return lines;
}

/** The channels or operations that list a message (matched by id: the parser's back-links miss $refs). */
function usedBy(models, message) {
  return models.filter((model) => model.messages().all().some((m) => m.id() === message.id()));
}

function renderMessages(doc) {
  const lines = ['## Messages', ''];
  for (const message of doc.messages().all()) {
    const title = message.title() ? `: ${message.title()}` : '';
    lines.push(...heading(3, 'message', message.id(), `${code(message.id())}${title}`));
    lines.push(...paragraph(message.summary()));
    lines.push(...paragraph(message.description()));
    const correlation = message.correlationId();
    const docs = message.externalDocs();
    lines.push(
      ...facts([
        ['Name', message.name() && code(message.name())],
        ['Content type', message.contentType() && code(message.contentType())],
        ['Correlation id', correlation && `${code(correlation.location())}${correlation.description() ? `: ${correlation.description()}` : ''}`],
        ['Channels', usedBy(doc.channels().all(), message).map((c) => link('channel', c.id())).join(', ')],
        ['Operations', usedBy(doc.operations().all(), message).map((o) => `${link('operation', o.id())} (${o.action()})`).join(', ')],
        [
          'Reply of',
          doc
            .operations()
            .all()
            .filter((o) => o.reply() && o.reply().messages().all().some((m) => m.id() === message.id()))
            .map((o) => link('operation', o.id()))
            .join(', '),
        ],
        ['Tags', message.tags().all().map((t) => code(t.name())).join(', ')],
        ['More', docs && `[${docs.description() || docs.url()}](${docs.url()})`],
      ]),
    );
    lines.push(...schemaSection('Headers', message.headers(), 4));
    lines.push(...schemaSection('Payload', message.payload(), 4));
    lines.push(...bindings(message, 4));
  }
  return lines;
}

function renderSecuritySchemes(doc) {
  const lines = ['## Security schemes', ''];
  for (const scheme of doc.components().securitySchemes().all()) {
    lines.push(...heading(3, 'security', scheme.id(), `${code(scheme.id())}: ${scheme.type()}`));
    lines.push(...paragraph(scheme.description()));
    lines.push(
      ...facts([
        ['Name', scheme.name()],
        ['In', scheme.in()],
        ['Scheme', scheme.scheme()],
        ['Bearer format', scheme.bearerFormat()],
        ['OpenID Connect URL', scheme.openIdConnectUrl()],
        ['Required scopes', (scheme.json().scopes || []).map(code).join(', ')],
      ]),
    );
    const flows = scheme.flows();
    if (flows) {
      const rows = [];
      for (const [kind, flow] of [
        ['implicit', flows.implicit()],
        ['password', flows.password()],
        ['clientCredentials', flows.clientCredentials()],
        ['authorizationCode', flows.authorizationCode()],
      ]) {
        if (!flow) continue;
        const json = flow.json();
        const scopes = json.availableScopes || flow.scopes() || {};
        rows.push([
          kind,
          [flow.authorizationUrl(), flow.tokenUrl(), flow.refreshUrl()].filter(Boolean).join('<br>'),
          Object.entries(scopes).map(([s, d]) => `${code(s)}: ${d}`).join('<br>'),
        ]);
      }
      lines.push(...table(['Flow', 'URLs', 'Scopes'], rows));
    }
  }
  return lines;
}

// ---------------------------------------------------------------------------------------

async function main(argv) {
  if (argv.length !== 2) {
    console.error('usage: node render.mjs <asyncapi.yaml> <output.md>');
    return 2;
  }
  const [input, output] = argv.map((p) => resolve(p));
  const source = argv[0];
  const parser = new Parser();
  let result;
  try {
    result = await fromFile(parser, input).parse();
  } catch (error) {
    console.error(`${source}: cannot be read or parsed: ${error.message}`);
    return 1;
  }
  const { document, diagnostics } = result;
  let errors = 0;
  for (const d of diagnostics) {
    if (d.severity === DiagnosticSeverity.Error) errors += 1;
    if (d.severity > DiagnosticSeverity.Warning) continue;
    const where = d.range ? `:${d.range.start.line + 1}:${d.range.start.character + 1}` : '';
    const path = d.path && d.path.length ? ` at ${d.path.join('.')}` : '';
    console.error(`${source}${where}: ${SEVERITY[d.severity]} ${d.code}: ${d.message}${path}`);
  }
  if (!document || errors > 0) {
    console.error(`${source}: ${errors} error(s); no documentation written`);
    return 1;
  }
  const lines = [
    ...renderInfo(document, source),
    ...renderServers(document),
    ...renderChannels(document),
    ...renderOperations(document),
    ...renderMessages(document),
    ...renderSecuritySchemes(document),
  ];
  const markdown = `${lines.join('\n').replace(/\n{3,}/g, '\n\n').trimEnd()}\n`;
  await mkdir(dirname(output), { recursive: true });
  await writeFile(output, markdown, 'utf8');
  console.log(`wrote ${relative(process.cwd(), output) || output} from ${source}`);
  return 0;
}

process.exitCode = await main(process.argv.slice(2)).catch((error) => {
  console.error(error && error.stack ? error.stack : error);
  return 1;
});
