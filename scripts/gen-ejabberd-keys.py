#!/usr/bin/env python3
"""Regenerate crates/server/src/config/ejabberd.rs: the option, listener and module
names of ejabberd's configuration reference, read from ejabberd's git history
(tags 23.01 and later, module names since 16.x) and ejabberd-contrib."""
import subprocess, re, collections
import os, sys
# Usage: EJABBERD_GIT=path/to/ejabberd.git EJABBERD_CONTRIB_GIT=path/to/ejabberd-contrib.git \
#   python3 scripts/gen-ejabberd-keys.py > crates/server/src/config/ejabberd.rs && cargo fmt
R=os.environ.get('EJABBERD_GIT','ejabberd')
def git(*a): return subprocess.run(['git','-C',R]+list(a),capture_output=True,text=True).stdout
tags=[t for t in git('tag').split() if re.match(r'^(2[0-9])\.\d+(\.\d+)?$',t)]
tags=[t for t in tags if int(t.split('.')[0])>=23]+['HEAD']
alltags=[t for t in git('tag').split() if re.match(r'^(1[6-9]|2[0-9])\.\d+(\.\d+)?$',t)]+['HEAD']
# module names across 16.x..HEAD
mods=set()
for t in alltags:
    for f in git('ls-tree','--name-only',t,'src/').split():
        m=re.match(r'src/(mod_[a-z0-9_]+)\.erl$',f)
        if m: mods.add(m.group(1))
# keep only real gen_mod modules: those with start/2 & depends or mod_options; approximate by mod_opt_type or mod_options in HEAD or any tag
modopts=collections.defaultdict(set)
realmods=set()
for t in tags:
    files=git('grep','-l','-E','^(mod_options|mod_opt_type)\\(',t,'--','src').split()
    for f in files:
        f=f.split(':',1)[1]
        name=re.match(r'src/(.*)\.erl',f).group(1)
        realmods.add(name)
        txt=git('show',f'{t}:{f}')
        for o in re.findall(r'^mod_opt_type\(([a-z_0-9]+)\)',txt,re.M): modopts[name].add(o)
        # options listed in mod_options
        m=re.search(r'^mod_options\(_?[A-Za-z]*\)\s*->(.*?)\.\s*$',txt,re.M|re.S)
        if m:
            for o in re.findall(r'\{([a-z_0-9]+),',m.group(1)): modopts[name].add(o)
old=[m for m in mods if m not in realmods]

contrib_dirs = subprocess.run(['git','-C',os.environ.get('EJABBERD_CONTRIB_GIT','ejabberd-contrib'),'ls-tree','--name-only','HEAD'],capture_output=True,text=True).stdout.split()
contrib=set(d for d in contrib_dirs if d.startswith('mod_')) | {'mod_stats2file','mod_archive_webview','mod_couch','mod_spam_filter_rtbl'}
modnames = (realmods | {'mod_echo','mod_http_bind','mod_irc','mod_ip_blacklist','mod_configure2','mod_time','mod_service_log','mod_sic','mod_stats','mod_legacy_auth','mod_scram_upgrade'} | contrib)
modnames = {m for m in modnames if not re.search(r'_(opt|mnesia|sql|riak|redis|sup)$', m)}
# top-level options
top=set()
for t in tags:
    top |= set(re.findall(r'^opt_type\(([a-z_0-9]+)\)', git('show',f'{t}:src/ejabberd_options.erl'), re.M))
# listener options
lis=set()
for t in tags:
    for f in ['ejabberd_listener','ejabberd_c2s','ejabberd_http','ejabberd_s2s_in','ejabberd_service','ejabberd_stun','ejabberd_sip','mod_mqtt','mod_proxy65_stream']:
        txt=git('show',f'{t}:src/{f}.erl')
        lis |= set(re.findall(r'^listen_opt_type\(([a-z_0-9]+)\)', txt, re.M))
        m=re.search(r'^listen_options\(\)\s*->(.*?)\]\s*(\+\+[^.]*)?\.\s*$',txt,re.M|re.S)
        if m:
            lis |= set(re.findall(r'\{([a-z_0-9]+),',m.group(1)))
            lis |= set(re.findall(r'(?<![{a-z_])([a-z][a-z_0-9]+)(?=\s*[,\]])',m.group(1))) & {'module','port'}
lis -= {"0","127","ok","nowarn_function"}
lis |= {'pre_auth_max_stanza_size','pre_auth_max_stanza_elements','module','port'}
def arr(name, items):
    s=f'pub(crate) const {name}: &[&str] = &[\n'
    line='   '
    for i in sorted(items):
        piece=f' "{i}",'
        if len(line)+len(piece)>99:
            s+=line+'\n'; line='   '
        line+=piece
    return s+line+'\n];\n'
out='''//! Names from ejabberd's configuration reference (generated from ejabberd's
//! sources, versions 23.01 to 26.x: `ejabberd_options.erl` `opt_type/1`, the
//! listeners' `listen_opt_type/1` and `listen_options/0`, each module's
//! `mod_opt_type/1` and `mod_options/1`; module names since 16.x and the
//! ejabberd-contrib modules). Only names are kept, to tell an ejabberd option
//! Palaver does not use (a warning) from a typo (an error). Sorted: searched
//! with `binary_search`. Regenerate with `scripts/gen-ejabberd-keys.py`.

'''
out+='/// Top-level options.\n'+arr('TOP_LEVEL', top)+'\n'
out+='/// Options of `listen` entries (every listener module).\n'+arr('LISTEN', lis)+'\n'
out+='/// Listener modules (`listen: - module: …`).\n'+arr('LISTENER_MODULES', {'ejabberd_c2s','ejabberd_s2s_in','ejabberd_service','ejabberd_http','ejabberd_stun','ejabberd_sip','ejabberd_xmlrpc','mod_mqtt','mod_proxy65'})+'\n'
out+='/// Modules (`modules: mod_…`), core and contrib.\n'+arr('MODULES', modnames)+'\n'
out+='/// Options of each module, by module name.\npub(crate) const MODULE_OPTIONS: &[(&str, &[&str])] = &[\n'
for m in sorted(modopts):
    modopts[m] = {o for o in modopts[m] if re.match(r"^[a-z]", o)}
    if m not in modnames: continue
    items=' '.join(f'"{o}",' for o in sorted(modopts[m]))
    out+=f'    ("{m}", &[{items}]),\n'
out+='];\n'
sys.stdout.write(out)
