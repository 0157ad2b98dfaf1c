// {{name}}: sets request and response headers from its JSON pluginConfig:
//   {"request": {"x-hello": "world"}, "response": {"x-served-by": "{{name}}"}}
// A configuration that is not that shape is refused at start (an error log, and
// proxy_on_configure returns false), so a typo never reaches traffic.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
  log, LogLevelValues,
} from "@solo-io/proxy-runtime";

class Headers {
  names: Array<string> = new Array<string>();
  values: Array<string> = new Array<string>();
}

class Config {
  request: Headers = new Headers();
  response: Headers = new Headers();
}

// A reader for exactly the JSON this plugin takes: an object of at most two objects of strings.
class Reader {
  at: i32 = 0;
  error: string = "";
  constructor(public text: string) {}

  fail(message: string): bool {
    if (this.error.length == 0) {
      this.error = message + " at offset " + this.at.toString();
    }
    return false;
  }

  skipSpace(): void {
    while (this.at < this.text.length) {
      const c = this.text.charCodeAt(this.at);
      if (c != 32 && c != 9 && c != 10 && c != 13) return;
      this.at++;
    }
  }

  eat(c: i32): bool {
    this.skipSpace();
    if (this.at < this.text.length && this.text.charCodeAt(this.at) == c) {
      this.at++;
      return true;
    }
    return false;
  }

  str(): string | null {
    if (!this.eat(34)) { this.fail("expected a string"); return null; }
    let out = "";
    while (this.at < this.text.length) {
      const c = this.text.charCodeAt(this.at++);
      if (c == 34) return out;
      if (c == 92) {
        if (this.at >= this.text.length) break;
        const e = this.text.charCodeAt(this.at++);
        if (e == 110) out += "\n";
        else if (e == 116) out += "\t";
        else if (e == 34 || e == 92 || e == 47) out += String.fromCharCode(e);
        else { this.fail("unsupported escape"); return null; }
      } else {
        out += String.fromCharCode(c);
      }
    }
    this.fail("unterminated string");
    return null;
  }

  headers(into: Headers): bool {
    if (!this.eat(123)) return this.fail("expected an object of header names to strings");
    if (this.eat(125)) return true;
    do {
      const name = this.str();
      if (name == null) return false;
      if (!this.eat(58)) return this.fail("expected ':'");
      const value = this.str();
      if (value == null) return this.fail("header values are strings");
      into.names.push(name!);
      into.values.push(value!);
    } while (this.eat(44));
    return this.eat(125) || this.fail("expected ',' or '}'");
  }

  config(into: Config): bool {
    if (!this.eat(123)) return this.fail("expected an object");
    if (this.eat(125)) return this.end();
    do {
      const key = this.str();
      if (key == null) return false;
      if (!this.eat(58)) return this.fail("expected ':'");
      if (key == "request") {
        if (!this.headers(into.request)) return false;
      } else if (key == "response") {
        if (!this.headers(into.response)) return false;
      } else {
        return this.fail("unknown field `" + key! + "` (expected request or response)");
      }
    } while (this.eat(44));
    if (!this.eat(125)) return this.fail("expected ',' or '}'");
    return this.end();
  }

  end(): bool {
    this.skipSpace();
    return this.at == this.text.length || this.fail("trailing characters");
  }
}

class Root extends RootContext {
  config: Config = new Config();

  onConfigure(configuration_size: u32): bool {
    if (configuration_size == 0) return true;
    super.onConfigure(configuration_size);
    const reader = new Reader(this.getConfiguration());
    const config = new Config();
    if (!reader.config(config)) {
      log(LogLevelValues.error, "{{name}}: invalid pluginConfig: " + reader.error);
      return false;
    }
    this.config = config;
    return true;
  }

  createContext(context_id: u32): Context {
    return new Filter(context_id, this);
  }
}

class Filter extends Context {
  config: Config;

  constructor(context_id: u32, root: Root) {
    super(context_id, root);
    this.config = root.config;
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const set = this.config.request;
    for (let i = 0; i < set.names.length; i++) {
      stream_context.headers.request.replace(set.names[i], set.values[i]);
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const set = this.config.response;
    for (let i = 0; i < set.names.length; i++) {
      stream_context.headers.response.replace(set.names[i], set.values[i]);
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new Root(context_id); }, "{{name}}");
